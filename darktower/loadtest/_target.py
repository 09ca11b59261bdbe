"""Where the load goes: the GC API URL, a client credential and the certificate pin.

For ``python -m darktower`` the page URL serves the development credential and the dev
certificate's hash (plain HTTP on 127.0.0.1); a deployment is named in full by the options.
"""

from __future__ import annotations

import attrs

from darktower.client import DevStackError, fetch_dev_access

from ._options import LoadTestSettings


class TargetError(Exception):
    """The target cannot be used; the message says what to do (no traceback is shown)."""


@attrs.frozen
class Target:
    api_url: str
    client_id: str
    client_secret: str
    certificate_hashes: tuple[bytes, ...]  # empty: verify the certificate with the system CAs


async def resolve_target(settings: LoadTestSettings) -> Target:
    """The :class:`Target` of ``settings``: fetched from the dev page URL unless the options
    name everything. Raises :class:`TargetError`; cancellable (the HTTP call is abandoned)."""
    pins: tuple[bytes, ...] = ()
    if settings.cert_sha256:
        pins = (bytes.fromhex(settings.cert_sha256),)
    if not settings.dev_stack:
        return Target(settings.api_url, settings.client_id, settings.client_secret, pins)
    try:
        access = await fetch_dev_access(
            settings.url,
            client_id=settings.client_id,
            client_secret=settings.client_secret,
            certificate_sha256=pins[0] if pins else b"",
            timeout_s=settings.connect_timeout,
        )
    except DevStackError as exc:
        raise TargetError(
            f"{exc}. For a deployment give --api with --client-id and --client-secret."
        ) from None
    return Target(
        settings.api_url, access.client_id, access.client_secret, (access.certificate_sha256,)
    )
