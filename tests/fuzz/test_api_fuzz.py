"""schemathesis against the live HTTP API, on a fixed budget (issue 18 item 5).

Every operation of the server's own /openapi.json gets generated requests (schema-valid and
schema-violating), each signed as DESIGN §3.1 says (or sent with the device's bearer token where the
route takes one), so they reach the body parsers and the store rather than stopping at 401. The
budget is fixed and derandomized: the same requests on every CI run."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import hypothesis.strategies as st
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from mqttpush import signing
from tests.conftest import Running
from tests.fuzz.device import serves_a_device

EXAMPLES_PER_OPERATION = 25
"""~25 operations: ~600 requests, about 15 s here; well within 60 s on 2 shared cores."""
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


class Credentials(requests.auth.AuthBase):
    """Signs the request as it goes on the wire (final body bytes, path with query), or sends a
    device's bearer token instead."""

    def __init__(self, r: Running, device_token: str | None) -> None:
        self.r, self.device_token = r, device_token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if self.device_token is not None:
            request.headers["Authorization"] = f"Bearer {self.device_token}"
            return request
        body = request.body or b""
        assert isinstance(body, str | bytes), "a streamed body cannot be signed up front"
        raw = body.encode() if isinstance(body, str) else body
        assert request.method is not None
        request.headers.update(
            signing.signed_headers(
                self.r.app_key, self.r.app_secret, request.method, request.path_url, raw, time.time()
            )
        )
        return request


def _schemes(operation: Any) -> set[str]:
    return {name for requirement in operation.definition.raw.get("security", []) for name in requirement}


def _assert_error_shape(response: requests.Response, label: str) -> None:
    doc = response.json()
    assert isinstance(doc, dict) and isinstance(doc.get("error"), dict), (label, response.text)
    error = doc["error"]
    assert isinstance(error.get("code"), str) and isinstance(error.get("message"), str), (
        label,
        response.text,
    )


def _fuzz(
    r: Running, session: requests.Session, operation: Any, device: tuple[str, str], statuses: dict[int, int]
) -> None:
    """EXAMPLES_PER_OPERATION requests to one operation, each checked."""
    device_id, device_token = device
    schemes = _schemes(operation)
    cases = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases, as_device=st.booleans(), own_device=st.booleans())
    def fuzz(case: Any, as_device: bool, own_device: bool) -> None:
        if own_device and "device_id" in (case.path_parameters or {}):
            case.path_parameters["device_id"] = device_id  # reach past not_your_device
        bearer = "deviceToken" in schemes and (as_device or "appKey" not in schemes)
        response = case.call(
            base_url=r.url, session=session, auth=Credentials(r, device_token if bearer else None)
        )
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        label = f"{case.method} {case.formatted_path}"
        assert response.status_code < 500, (label, response.text)
        if response.status_code >= 400:
            _assert_error_shape(response, label)
        case.validate_response(response, checks=CHECKS)

    fuzz()


def test_api_fuzz(running: Running) -> None:
    r = running
    ((device_id, device_token),) = r.register()
    schema = schemathesis.openapi.from_url(r.url + "/openapi.json")
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results) > 20, "schemathesis refused part of the document"
    statuses: dict[int, int] = {}
    with requests.Session() as session:
        for operation in operations:
            _fuzz(r, session, operation, (device_id, device_token), statuses)
    assert any(200 <= s < 300 for s in statuses), statuses  # the fuzzer got past authentication
    asyncio.run(serves_a_device(r))


@pytest.mark.parametrize("scheme", ["signed", "bearer"])
def test_credentials_hook_is_accepted(running: Running, scheme: str) -> None:
    """The hook signs what requests sends: without that, the fuzzer would test only the 401 path."""
    ((device_id, device_token),) = running.register()
    token = device_token if scheme == "bearer" else None
    url = f"{running.url}/api/v1/devices/{device_id}/tags?x=1"
    response = requests.post(url, json={"add": ["fuzz"]}, auth=Credentials(running, token), timeout=10)
    assert response.status_code == 200, response.text
