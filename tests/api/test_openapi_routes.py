"""Issue 17 part 4: every route of the app is in ``/openapi.json`` with its credentials (app
tokens beside the signature, with the scope each route needs), its body and its error answers.

The test walks ``api.routes`` of an app built like the server's, so a route added later without
its declarations fails here; and it checks the declared token scope is the one enforced."""

from __future__ import annotations

import re
from typing import Any

import httpx
from fastapi.routing import APIRoute

from mqttpush.api.app import create_api
from mqttpush.api.context import ApiContext
from mqttpush.store.tokens import SCOPES
from tests.conftest import Running

SIGNED = {"appKey": [], "appTimestamp": [], "appNonce": [], "appSignature": []}
TOKEN = {"appToken": []}
# Routes kept out of the API document on purpose, each listed here by its owner: the web console's
# pages and session API (its own sign-in) and Prometheus's scrape endpoint (its own text format).
UNDOCUMENTED_PREFIXES = ("/console", "/metrics")
# POST routes that act on the path alone (the signature still covers an empty body).
NO_BODY = {("POST", "/api/v1/messages/{msg_id}/recall")}
QUICK = {
    "/api/v1/push/device/{device_id}",
    "/api/v1/push/alias/{alias_type}/{alias}",
    "/api/v1/push/tag/{expr}",
    "/api/v1/push/broadcast",
}
QUICK_HEADERS = {"Title", "Priority", "TTL", "Data", "Biz-Id"}


def _routes(r: Running) -> list[APIRoute]:
    s = r.server
    api = create_api(ApiContext(s.store, s.intake, s.tasks, s.clock, lambda host: host))
    return [route for route in api.routes if isinstance(route, APIRoute)]


def _doc_path(route: APIRoute) -> str:
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # /x/{expr:path} is /x/{expr} in OpenAPI


def _concrete(path: str) -> str:
    return re.sub(r"\{(\w+)(:\w+)?\}", r"\1", path)  # a well-formed unknown id for each parameter


def _token(r: Running, scope: str) -> str:
    store = r.server.store
    return str(r.call(store.run(store.tokens.create, r.app_key, scope)).token)


def test_docs_serve(running: Running) -> None:
    docs = httpx.get(running.url + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schemes = httpx.get(running.url + "/openapi.json").json()["components"]["securitySchemes"]
    assert schemes["appToken"] == schemes["appToken"] | {"type": "http", "scheme": "bearer"}


def test_every_route_is_documented_with_credentials_body_and_errors(running: Running) -> None:
    doc = httpx.get(running.url + "/openapi.json").json()
    schemes = set(doc["components"]["securitySchemes"])
    routes = _routes(running)
    assert len(routes) > 30
    for route in routes:
        if not route.include_in_schema:
            assert route.path.startswith(UNDOCUMENTED_PREFIXES), f"{route.path} is missing from /openapi.json"
            continue
        path = _doc_path(route)
        for method in sorted(route.methods or ()):
            where = (method, path)
            operation = doc["paths"][path][method.lower()]
            responses = operation["responses"]
            assert any(s.startswith("2") and responses[s]["description"] for s in responses), where
            if not path.startswith("/api/"):
                assert not operation.get("security"), where
                continue
            for status in ("400", "401", "403", "404", "413", "422", "429", "503"):
                error = responses[status]["content"]["application/json"]["schema"]
                assert error == {"$ref": "#/components/schemas/Error"}, (where, status)
            alternatives = operation["security"]
            assert alternatives and all(set(alt) <= schemes for alt in alternatives), where
            if SIGNED in alternatives:
                assert TOKEN in alternatives, where
                assert operation["x-token-scope"] in SCOPES, where
                assert operation["x-token-scope"] in operation["description"], where
            if method in ("POST", "PUT", "PATCH") and where not in NO_BODY:
                assert operation["requestBody"]["required"], where
                ((media, content),) = operation["requestBody"]["content"].items()
                assert media in ("application/json", "text/plain") and content["schema"], where
            else:
                assert "requestBody" not in operation, where


def test_the_quick_form_documents_its_text_body_and_headers(running: Running) -> None:
    doc = httpx.get(running.url + "/openapi.json").json()
    for path in QUICK:
        operation = doc["paths"][path]["post"]
        assert set(operation["requestBody"]["content"]) == {"text/plain"}, path
        headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
        assert headers == QUICK_HEADERS, path
        assert operation["x-token-scope"] == "push"
        assert "202" in operation["responses"]


def test_each_route_enforces_the_token_scope_it_declares(running: Running) -> None:
    """A token of the declared scope gets past authentication; one scope less gets 403."""
    r = running
    doc = httpx.get(r.url + "/openapi.json").json()
    tokens = {scope: _token(r, scope) for scope in SCOPES}
    checked = 0
    with httpx.Client(base_url=r.url) as http:
        for route in _routes(r):
            path = _doc_path(route)
            for method in sorted(route.methods or ()):
                operation: dict[str, Any] = doc["paths"].get(path, {}).get(method.lower(), {})
                if TOKEN not in operation.get("security", ()):
                    continue
                declared = operation["x-token-scope"]
                url = _concrete(route.path)
                enough = http.request(method, url, headers={"Authorization": f"Bearer {tokens[declared]}"})
                assert enough.status_code not in (401, 403), (method, path, declared, enough.text)
                rank = SCOPES.index(declared)
                if rank > 0:
                    less = SCOPES[rank - 1]
                    refused = http.request(method, url, headers={"Authorization": f"Bearer {tokens[less]}"})
                    assert refused.status_code == 403, (method, path, less, refused.text)
                    assert refused.json()["error"]["code"] == "insufficient_scope"
                checked += 1
    assert checked > 25
