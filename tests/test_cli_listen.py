"""``mqttpush device listen`` as a script uses it: how --timeout and --count end it (issue 13 item 10)."""

from __future__ import annotations

import json

from tests.conftest import Running, cli

# Long enough for a held message to arrive on a busy machine; the listener waits it out in full.
TIMEOUT = "3"


def _listen(r: Running, device: str, token: str, *extra: str) -> tuple[int, list[str], str]:
    proc = cli(
        "device", "listen", "--url", r.url, "--device-id", device, "--device-token", token, *extra, "--json"
    )
    return proc.returncode, [json.loads(line)["id"] for line in proc.stdout.splitlines()], proc.stderr


def test_timeout_without_count_ends_normally_having_printed_what_arrived(running: Running) -> None:
    r = running
    ((device, token),) = r.register()
    msg_id = r.push([device], title="hello")
    status, printed, stderr = _listen(r, device, token, "--timeout", TIMEOUT)
    assert (status, printed, stderr) == (0, [msg_id], "")
    r.wait_state(msg_id, device, "arrived")


def test_fewer_than_count_by_the_timeout_is_an_error_exit_2(running: Running) -> None:
    r = running
    ((device, token),) = r.register()
    msg_id = r.push([device], title="hello")
    status, printed, stderr = _listen(r, device, token, "--count", "2", "--timeout", TIMEOUT)
    assert (status, printed) == (2, [msg_id])
    assert stderr == f"error: 1 of 2 messages within {float(TIMEOUT)}s [listen_timeout]\n"
