"""The development page listener (plain HTTP on 127.0.0.1) is the only place the development
credential is handed out; every page is served with a Content-Security-Policy that forbids
framing (docs/decisions.md: Development-only GC routes)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.global_controller._harness import Stack, gc_stack

CREDENTIALS = {"client_id": "dev-id", "client_secret": "dev-secret"}


@pytest.fixture
async def dev_stack(tmp_path: pathlib.Path) -> AsyncIterator[Stack]:
    creds = tmp_path / "dev-client.json"
    creds.write_text(json.dumps(CREDENTIALS))
    async with gc_stack(
        tmp_path / "data", dev_http_port=0, dev_credentials_file=str(creds)
    ) as stack:
        yield stack


async def test_dev_credentials_only_on_the_loopback_page_listener(dev_stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=dev_stack.running.page_url) as page:
        reply = await page.get("/api/v1/dev/credentials")
        assert reply.status_code == 200
        assert reply.json() == CREDENTIALS
    for kind in ("h1", "h3"):
        async with dev_stack.api(kind) as api:
            for headers in ({}, {"x-forwarded-proto": "http", "forwarded": "proto=http"}):
                reply = await api.request("GET", "/api/v1/dev/credentials", headers=headers)
                assert (reply.status, reply.error_code) == (404, "NOT_FOUND"), (kind, reply.body)
            # The certificate hash is public knowledge (any TLS client sees the certificate).
            assert (await api.request("GET", "/api/v1/dev/certificate")).status == 200


async def test_pages_carry_a_content_security_policy(dev_stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=dev_stack.running.page_url) as page:
        for path in ("/", "/m/abc", "/static/app.js", "/static/style.css", "/nope"):
            reply = await page.get(path)
            csp = reply.headers["content-security-policy"]
            directives = dict(d.strip().split(" ", 1) for d in csp.split(";") if d.strip())
            assert directives["frame-ancestors"] == "'none'", path
            assert directives["script-src"] == "'self'", path  # no inline script, no eval
            assert directives["default-src"] == "'none'", path
            # WebTransport to the MC and MH (https://127.0.0.1:PORT in development)
            assert "https:" in directives["connect-src"].split(), path
            assert reply.headers["x-frame-options"] == "DENY"
            assert reply.headers["x-content-type-options"] == "nosniff"
    async with dev_stack.api("h1") as api:
        reply = await api.request("GET", "/")
        assert "frame-ancestors 'none'" in reply.headers["content-security-policy"]
