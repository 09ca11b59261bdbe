"""Where the load goes: the GC API URL, a client credential and the certificate pin.

For ``python -m darktower`` the page URL serves the development credential and the dev
certificate's hash (plain HTTP on 127.0.0.1); a deployment is named in full by the options.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import attrs
import trio

from ._options import LoadTestSettings

CREDENTIALS_PATH = "api/v1/dev/credentials"
CERTIFICATE_PATH = "api/v1/dev/certificate"
# Largest dev endpoint reply read (they are a few hundred bytes); more is refused.
MAX_REPLY_BYTES = 64 * 1024


class TargetError(Exception):
    """The target cannot be used; the message says what to do (no traceback is shown)."""


@attrs.frozen
class Target:
    api_url: str
    client_id: str
    client_secret: str
    certificate_hashes: tuple[bytes, ...]  # empty: verify the certificate with the system CAs


def _get_json(url: str, timeout_s: float) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            body = reply.read(MAX_REPLY_BYTES + 1)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise TargetError(
                f"{url} answered 404: this is not a `python -m darktower` development stack. "
                "For a deployment give --api with --client-id and --client-secret."
            ) from None
        raise TargetError(f"{url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TargetError(
            f"cannot reach {url}: {reason}. Is `python -m darktower` running there?"
        ) from None
    if len(body) > MAX_REPLY_BYTES:
        raise TargetError(f"{url}: reply too large")
    try:
        return json.loads(body)
    except ValueError:
        raise TargetError(f"{url} did not answer JSON: is it a Dark Tower page URL?") from None


async def resolve_target(settings: LoadTestSettings) -> Target:
    """The :class:`Target` of ``settings``: fetched from the dev page URL unless the options
    name everything. Raises :class:`TargetError`; cancellable (the HTTP call is abandoned)."""
    pins: tuple[bytes, ...] = ()
    if settings.cert_sha256:
        pins = (bytes.fromhex(settings.cert_sha256),)
    if not settings.dev_stack:
        return Target(settings.api_url, settings.client_id, settings.client_secret, pins)
    base = settings.url if settings.url.endswith("/") else settings.url + "/"

    async def fetch(path: str) -> Any:
        return await trio.to_thread.run_sync(
            _get_json,
            urllib.parse.urljoin(base, path),
            settings.connect_timeout,
            abandon_on_cancel=True,
        )

    client_id, secret = settings.client_id, settings.client_secret
    if not client_id:
        creds = await fetch(CREDENTIALS_PATH)
        try:
            client_id, secret = str(creds["client_id"]), str(creds["client_secret"])
        except (KeyError, TypeError):
            raise TargetError(f"{base}{CREDENTIALS_PATH}: no client_id/client_secret") from None
    if not pins:
        cert = await fetch(CERTIFICATE_PATH)
        try:
            pins = (bytes.fromhex(str(cert["sha256"])),)
        except (KeyError, TypeError, ValueError):
            raise TargetError(f"{base}{CERTIFICATE_PATH}: no sha256") from None
    return Target(settings.api_url, client_id, secret, pins)
