"""What ``python -m darktower`` tells a client on its page server (plain HTTP, 127.0.0.1):
the development credential and the SHA-256 of its generated certificate, to pin.

::

    access = await fetch_dev_access("http://127.0.0.1:8080")
    async with open_gc_client(API, server_certificate_hashes=[access.certificate_sha256]) as gc:
        await gc.authenticate(access.client_id, access.client_secret)
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import attrs
import trio

CREDENTIALS_PATH = "api/v1/dev/credentials"
CERTIFICATE_PATH = "api/v1/dev/certificate"
# The replies are a few hundred bytes; a larger one is refused, not buffered.
MAX_REPLY_BYTES = 64 * 1024


class DevStackError(Exception):
    """The page URL is not a reachable ``python -m darktower`` page server; the message says
    what to do."""


@attrs.frozen
class DevAccess:
    client_id: str
    client_secret: str
    certificate_sha256: bytes


def _get_json(url: str, timeout_s: float) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            body = reply.read(MAX_REPLY_BYTES + 1)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise DevStackError(
                f"{url} answered 404: this is not a `python -m darktower` development stack"
            ) from None
        raise DevStackError(f"{url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DevStackError(
            f"cannot reach {url}: {reason}. Is `python -m darktower` running there?"
        ) from None
    if len(body) > MAX_REPLY_BYTES:
        raise DevStackError(f"{url}: reply too large")
    try:
        return json.loads(body)
    except ValueError:
        raise DevStackError(f"{url} did not answer JSON: is it a Dark Tower page URL?") from None


async def fetch_dev_json(page_url: str, path: str, *, timeout_s: float = 10.0) -> Any:
    """``GET page_url/path`` as JSON, in a worker thread (abandoned if cancelled).
    Raises :class:`DevStackError`."""
    base = page_url if page_url.endswith("/") else page_url + "/"
    return await trio.to_thread.run_sync(
        _get_json, urllib.parse.urljoin(base, path), timeout_s, abandon_on_cancel=True
    )


async def fetch_dev_credentials(page_url: str, *, timeout_s: float = 10.0) -> tuple[str, str]:
    """The development ``(client_id, client_secret)``. Raises :class:`DevStackError`."""
    creds = await fetch_dev_json(page_url, CREDENTIALS_PATH, timeout_s=timeout_s)
    try:
        return str(creds["client_id"]), str(creds["client_secret"])
    except (KeyError, TypeError):
        raise DevStackError(
            f"{page_url}: {CREDENTIALS_PATH} has no client_id/client_secret"
        ) from None


async def fetch_dev_certificate(page_url: str, *, timeout_s: float = 10.0) -> bytes:
    """The SHA-256 of the stack's certificate. Raises :class:`DevStackError`."""
    cert = await fetch_dev_json(page_url, CERTIFICATE_PATH, timeout_s=timeout_s)
    try:
        return bytes.fromhex(str(cert["sha256"]))
    except (KeyError, TypeError, ValueError):
        raise DevStackError(f"{page_url}: {CERTIFICATE_PATH} has no sha256") from None


async def fetch_dev_access(
    page_url: str,
    *,
    client_id: str = "",
    client_secret: str = "",
    certificate_sha256: bytes = b"",
    timeout_s: float = 10.0,
) -> DevAccess:
    """The credential and the certificate pin: those given, the rest from the page server at
    ``page_url`` (nothing is fetched when both are given). Raises :class:`DevStackError`."""
    if not (client_id and client_secret):
        client_id, client_secret = await fetch_dev_credentials(page_url, timeout_s=timeout_s)
    if not certificate_sha256:
        certificate_sha256 = await fetch_dev_certificate(page_url, timeout_s=timeout_s)
    return DevAccess(client_id, client_secret, certificate_sha256)
