"""The OpenAPI document is complete: every route's body, credentials and error shape (issue 18 item 5).

The routes read raw bytes themselves (the signature covers them), so FastAPI cannot infer any of
this; these tests keep the hand-written declarations honest against what the server does."""

from __future__ import annotations

import time
from typing import Any

import httpx
from fastapi.routing import APIRoute

from mqttpush import signing
from mqttpush.api.app import create_api
from mqttpush.api.context import ApiContext
from tests.conftest import Running

# POST routes that act on the path alone (the signature still covers an empty body).
NO_BODY = {("POST", "/api/v1/messages/{msg_id}/recall")}


def _routes(r: Running) -> list[tuple[str, str]]:
    """(method, path) of every route of an app built like the server's."""
    s = r.server
    api = create_api(ApiContext(s.store, s.intake, s.tasks, s.clock, lambda host: host))
    return [
        (method, route.path.replace(":path}", "}"))  # /x/{expr:path} is /x/{expr} in OpenAPI
        for route in api.routes
        if isinstance(route, APIRoute) and route.include_in_schema  # tests/api/test_openapi_routes.py
        for method in sorted(route.methods or ())
    ]


def _concrete(path: str) -> str:
    return path.replace("{", "").replace("}", "")  # /x/{msg_id} -> /x/msg_id: a well-formed unknown id


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    name = ref.removeprefix("#/components/schemas/")
    resolved: dict[str, Any] = doc["components"]["schemas"][name]
    return resolved


def test_docs_and_openapi_json_serve(running: Running) -> None:
    assert httpx.get(running.url + "/docs").status_code == 200
    doc = httpx.get(running.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    schemes = doc["components"]["securitySchemes"]
    assert schemes["deviceToken"] == schemes["deviceToken"] | {"type": "http", "scheme": "bearer"}
    signed_headers = {
        schemes[name]["name"] for name in ("appKey", "appTimestamp", "appNonce", "appSignature")
    }
    assert signed_headers == {
        signing.KEY_HEADER,
        signing.TIMESTAMP_HEADER,
        signing.NONCE_HEADER,
        signing.SIGNATURE_HEADER,
    }
    bearers = ("deviceToken", "appToken")
    assert all(schemes[n] == schemes[n] | {"type": "http", "scheme": "bearer"} for n in bearers)
    assert all(
        schemes[n]["type"] == "apiKey" and schemes[n]["in"] == "header" for n in schemes if n not in bearers
    )


def test_every_route_declares_its_body_credentials_and_errors(running: Running) -> None:
    doc = httpx.get(running.url + "/openapi.json").json()
    routes = _routes(running)
    assert len(routes) > 20
    for method, path in routes:
        operation = doc["paths"][path][method.lower()]
        if method in ("POST", "PUT", "PATCH") and (method, path) not in NO_BODY:
            body = operation["requestBody"]
            assert body["required"], (method, path)
            ((media, content),) = body["content"].items()
            schema = _resolve(doc, content["schema"])
            assert schema.get("type") in ("object", "string"), (method, path, media)
        else:
            assert "requestBody" not in operation, (method, path)
        if path.startswith("/api/"):
            assert operation["security"], (method, path)
            for status in ("400", "401", "404", "422"):
                error = operation["responses"][status]["content"]["application/json"]["schema"]
                assert error == {"$ref": "#/components/schemas/Error"}, (method, path, status)
        else:
            assert not operation.get("security"), (method, path)


def test_declarations_match_what_the_routes_do(running: Running) -> None:
    """Without credentials a route that declares security answers 401 and the others do not; signed
    with an empty body, a route that answers 400 malformed_json declares a JSON body."""
    doc = httpx.get(running.url + "/openapi.json").json()
    json_bodies = 0
    with httpx.Client(base_url=running.url) as http:
        for method, path in _routes(running):
            operation = doc["paths"][path][method.lower()]
            url = _concrete(path)
            bare = http.request(method, url)
            assert (bare.status_code == 401) == bool(operation.get("security")), (method, path, bare.text)
            headers = signing.signed_headers(
                running.app_key, running.app_secret, method, url, b"", time.time()
            )
            signed = http.request(method, url, headers=headers)
            if signed.status_code == 400 and signed.json()["error"]["code"] == "malformed_json":
                assert "application/json" in operation["requestBody"]["content"], (method, path)
                json_bodies += 1
    assert json_bodies >= 10  # the probe reached the body parser of most JSON routes
