"""``GET /metrics`` (docs/operations.md, "Metrics") against a real server: it parses as Prometheus
text, and its counters move as pushes, receipts and vendor forwards flow."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from queue import Queue
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mqttpush import __version__
from mqttpush.device import DeviceClient
from mqttpush.errors import ClientError
from tests.conftest import Running, _serve, serving_apns

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "examples" / "grafana" / "mqttpush.json"
APNS_TOKEN = "a" * 64

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, **headers: str) -> Samples:
    """Every sample of ``/metrics``, parsed by prometheus-client's own parser."""
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def wait_for(url: str, check: Callable[[Samples], bool], timeout: float = 10) -> Samples:
    """Scrape until ``check`` holds (counters a background part updates: poll with a deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if check(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(
                f"metrics never got there: {sorted(k for k in samples if k[0].startswith('mqttpush'))}"
            )


def test_metrics_move_with_a_push_to_a_connected_device_and_its_receipt(running: Running) -> None:
    r = running
    before = scrape(r.url)
    assert value(before, "mqttpush_build_info", version=__version__) == 1
    assert value(before, "mqttpush_mqtt_connections", transport="tcp", state="connected") == 0
    assert "process_cpu_seconds_total" in {n for n, _ in before}

    ((device, token),) = r.register()
    got: Queue[dict[str, Any]] = Queue()
    client = DeviceClient.from_server(r.url, device, token, on_message=got.put)
    client.connect()
    try:
        after_connect = scrape(r.url)
        assert value(after_connect, "mqttpush_mqtt_connections", transport="tcp", state="connected") == 1
        assert value(after_connect, "mqttpush_mqtt_connects_total", transport="tcp") == 1

        msg_id = r.push([device])
        assert got.get(timeout=10)["id"] == msg_id
        r.wait_state(msg_id, device, "arrived")
        samples = scrape(r.url)
    finally:
        client.disconnect()

    assert value(samples, "mqttpush_mqtt_messages_out_total", topic_class="inbox") >= 1
    assert value(samples, "mqttpush_mqtt_messages_in_total", topic_class="receipts") >= 1
    assert value(samples, "mqttpush_mqtt_messages_in_total", topic_class="presence") >= 1
    assert value(samples, "mqttpush_delivery_transitions_total", state="accepted", channel="none") >= 1
    assert value(samples, "mqttpush_delivery_transitions_total", state="published", channel="mqtt") == 1
    assert value(samples, "mqttpush_delivery_transitions_total", state="arrived", channel="none") == 1
    push = {"method": "POST", "route": "/api/v1/push"}
    assert value(samples, "mqttpush_http_requests_total", status="2xx", **push) == 1
    assert value(samples, "mqttpush_http_request_seconds_count", **push) == 1
    assert value(samples, "mqttpush_http_request_seconds_bucket", le="+Inf", **push) == 1
    # a route's template, never the raw path with its ids
    status_route = {"method": "GET", "route": "/api/v1/messages/{msg_id}"}
    assert value(samples, "mqttpush_http_requests_total", status="2xx", **status_route) >= 1
    assert not [ls for n, ls in samples if n == "mqttpush_http_requests_total" and msg_id in str(ls)]
    assert value(samples, "mqttpush_store_commit_seconds_count") > value(
        before, "mqttpush_store_commit_seconds_count"
    )
    assert value(samples, "mqttpush_store_commit_batch_size_count") > 0
    assert value(samples, "mqttpush_queue_depth", queue="dispatcher") == 0
    assert value(samples, "mqttpush_publish_lag_seconds") == 0
    assert ("mqttpush_webhook_posts_total", ()) in samples
    assert value(samples, "mqttpush_webhooks_backing_off") == 0

    gone = wait_for(
        r.url, lambda s: value(s, "mqttpush_mqtt_connections", transport="tcp", state="connected") == 0
    )
    assert value(gone, "mqttpush_mqtt_connects_total", transport="tcp") == 1


def test_unmatched_paths_and_refused_logins_are_counted_without_their_text(running: Running) -> None:
    r = running
    assert httpx.get(f"{r.url}/no/such/path-12345").status_code == 404
    with pytest.raises(ClientError, match="refused"):
        DeviceClient(
            host="127.0.0.1", port=r.mqtt_port, app_key=r.app_key, device_id="nobody", device_token="wrong"
        ).connect(timeout=5)
    samples = wait_for(r.url, lambda s: total(s, "mqttpush_mqtt_refused_total") >= 1)
    assert value(samples, "mqttpush_mqtt_refused_total", reason="bad_credentials") == 1
    assert value(samples, "mqttpush_http_requests_total", method="GET", route="unmatched", status="4xx") == 1
    assert "path-12345" not in httpx.get(f"{r.url}/metrics").text


def test_event_loop_lag_is_sampled(running: Running) -> None:
    samples = wait_for(running.url, lambda s: value(s, "mqttpush_event_loop_lag_seconds_count") >= 2)
    assert value(samples, "mqttpush_event_loop_lag_seconds_sum") >= 0


async def test_vendor_forward_counts_latency_and_outcome(running: Running, tmp_path: Path) -> None:
    r = running
    async with serving_apns(r, tmp_path) as fake:
        ((device, _),) = r.register(platform="ios")
        with r.client() as c:
            c.set_vendor_token(device, "apns", APNS_TOKEN)
        await asyncio.to_thread(r.push, [device])
        await asyncio.to_thread(r.call, r.server.dispatcher.drained())
        await asyncio.to_thread(r.call, r.server.bridge.vendors.drained())
        assert len(fake.received) == 1
        samples = await asyncio.to_thread(scrape, r.url)
    assert value(samples, "mqttpush_vendor_requests_total", vendor="apns", outcome="ok") == 1
    assert value(samples, "mqttpush_vendor_request_seconds_count", vendor="apns") == 1
    assert value(samples, "mqttpush_vendor_request_seconds_sum", vendor="apns") > 0
    assert value(samples, "mqttpush_delivery_transitions_total", state="forwarded", channel="apns") == 1
    assert value(samples, "mqttpush_vendor_queue_depth", vendor="apns") == 0


def test_each_server_in_a_process_counts_for_itself(running: Running, tmp_path: Path) -> None:
    other = _serve(tmp_path / "other")
    second = next(other)
    try:
        running.register()
        assert (
            value(
                scrape(running.url),
                "mqttpush_http_requests_total",
                method="POST",
                route="/api/v1/devices",
                status="2xx",
            )
            == 1
        )
        assert (
            value(
                scrape(second.url),
                "mqttpush_http_requests_total",
                method="POST",
                route="/api/v1/devices",
                status="2xx",
            )
            == 0
        )
    finally:
        other.close()


def test_a_metrics_token_closes_the_endpoint(tmp_path: Path) -> None:
    served = _serve(tmp_path / "data", metrics_token="s3cret-scrape")
    r = next(served)
    try:
        refused = httpx.get(f"{r.url}/metrics")
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "bad_metrics_token"
        assert httpx.get(f"{r.url}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        samples = scrape(r.url, Authorization="Bearer s3cret-scrape")
        assert (
            value(samples, "mqttpush_http_requests_total", method="GET", route="/metrics", status="4xx") == 2
        )
    finally:
        served.close()


def _queried_metrics(dashboard: dict[str, Any]) -> set[str]:
    import re

    names: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            names.update(re.findall(r"\b(mqttpush_[a-z_]+|process_[a-z_]+)\b", target["expr"]))
    return names


def test_the_grafana_dashboard_queries_only_metrics_that_exist(running: Running) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["panels"] and dashboard["title"]
    assert any(v["type"] == "datasource" for v in dashboard["templating"]["list"])
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
    exposed = {n for n, _ in scrape(running.url)}
    # families with no sample yet still have their HELP line; histograms end in _bucket/_sum/_count
    text = httpx.get(f"{running.url}/metrics").text
    declared = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    known = exposed | declared | {f"{d}_{s}" for d in declared for s in ("bucket", "sum", "count", "total")}
    queried = _queried_metrics(dashboard)
    assert queried and not queried - known, sorted(queried - known)
