"""The TLS credentials of a QUIC service (the MC and the MH; the GC keeps its own on disk)."""

from __future__ import annotations

import logging

from darktower.logs import fields
from darktower.transport import TlsCredentials, generate_dev_certificate


def tls_credentials(certfile: str, keyfile: str, *, log: logging.Logger) -> TlsCredentials:
    """The certificate and key read from ``certfile`` and ``keyfile`` when both are given,
    else a generated development certificate, logged on ``log`` with its SHA-256 (the value
    a browser pins). Raises ``OSError`` if a given file cannot be read."""
    if certfile and keyfile:
        return TlsCredentials.from_files(certfile, keyfile)
    creds = generate_dev_certificate()
    log.info("generated a dev certificate", extra=fields(sha256=creds.sha256.hex()))
    return creds
