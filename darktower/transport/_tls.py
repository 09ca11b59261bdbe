"""QuicConfiguration for both ends: HTTP/3 ALPN, datagrams, our limits, TLS material."""

from __future__ import annotations

import ssl
from typing import Any

from aioquic.quic.configuration import QuicConfiguration

from ._certs import TlsCredentials
from ._config import TransportLimits
from ._core import load_core
from ._errors import ConnectFailed

# Initial connection-level credit, in stream windows. aioquic doubles it as it is used; what is
# actually buffered stays bounded by the per-stream windows times the open streams.
CONNECTION_WINDOW_STREAMS = 16


def quic_configuration(
    limits: TransportLimits,
    *,
    is_client: bool,
    tls: TlsCredentials | None = None,
    server_name: str | None = None,
    cafile: str | None = None,
    verify: bool = True,
) -> QuicConfiguration:
    build = load_core(limits.quic_core).configuration
    if build is not None:  # the optional core builds its own (_core.py)
        return build(  # type: ignore[no-any-return]
            limits,
            is_client=is_client,
            tls=tls,
            server_name=server_name,
            cafile=cafile,
            verify=verify,
        )
    config = QuicConfiguration(**configuration_fields(limits, is_client, server_name))
    if tls is not None:
        config.certificate = tls.certificate()
        config.certificate_chain = tls.chain()
        config.private_key = tls.private_key()
    apply_client_trust(config, is_client=is_client, cafile=cafile, verify=verify)
    return config


def configuration_fields(
    limits: TransportLimits, is_client: bool, server_name: str | None
) -> dict[str, Any]:
    """The QuicConfiguration fields from ``limits``, the same for either core's class."""
    return {
        "is_client": is_client,
        "alpn_protocols": ["h3"],
        # Without it a browser opens the session but its datagrams vanish.
        "max_datagram_frame_size": limits.max_datagram_frame_size,
        "idle_timeout": limits.idle_timeout_s,
        "max_datagram_size": limits.packet_size,
        "max_stream_data": limits.stream_receive_window,
        "max_data": limits.stream_receive_window * CONNECTION_WINDOW_STREAMS,
        "server_name": server_name,
    }


def apply_client_trust(config: Any, *, is_client: bool, cafile: str | None, verify: bool) -> None:
    """A client's CA file and verification switch (either core's QuicConfiguration)."""
    if is_client:
        if cafile is not None:
            config.load_verify_locations(cafile=cafile)
        if not verify:
            config.verify_mode = ssl.CERT_NONE


def check_pinned_certificate(digest: bytes | None, hashes: list[bytes]) -> None:
    """Raise ConnectFailed unless the server's certificate (its SHA-256 ``digest``, None when
    it presented none) has one of the pinned SHA-256s."""
    if digest is None:
        raise ConnectFailed("the server presented no certificate")
    if digest not in hashes:
        raise ConnectFailed("the server certificate matches none of the pinned hashes")
