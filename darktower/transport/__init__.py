"""transport: the only socket code. QUIC, HTTP/3 and WebTransport on aioquic's sans-IO core,
driven by trio (server and client share the endpoint and connection code).

Server::

    server = WebTransportServer(ServerConfig(tls=generate_dev_certificate(), port=4433),
                                {"/v1/media": Route(handler, authorize=check_token)})
    (host, port) = await nursery.start(server.run)        # or serve_webtransport(config, routes)

``authorize(request: ConnectRequest) -> context`` runs before the CONNECT is answered and may
raise ``RejectSession(401)``; unknown paths get 404, origins outside ``allowed_origins`` 403.
``handler(session, context)`` runs in the session's own cancel scope, owned by the connection:
it returning closes the session (code 0), raising closes it with the error's code, and the
session ending (peer close, connection lost, ``session.close``) cancels it.

Client::

    async with connect_webtransport("https://127.0.0.1:4433/v1/media?token=...",
                                    server_certificate_hashes=[sha256]) as session: ...
    async with open_http3_client("https://127.0.0.1:8443") as http: await http.request(...)

Sessions: ``open_bidirectional_stream()``, ``open_unidirectional_stream()``, ``accept_stream()``,
``send_datagram(data)`` (never blocks; DatagramTooLarge over ``max_datagram_size``),
``receive_datagram()``, ``close(code, reason)``, ``peer_close_code``/``peer_close_reason``,
``end`` (why it ended, None while open: ``ClosedByPeer(code, reason)``, ``ClosedLocally(code,
reason)``, ``ConnectionLost(code, reason, by_peer)``, ``IdleTimeout()``; ``_end.py``),
``path``, ``query``, ``headers``, ``origin``, ``cancel_scope``, ``transport_stats()`` (the
connection's packets sent, lost and received: :class:`TransportStats`, ``_stats.py``),
``local_address``, ``peer_address``, and on a client ``migrate()`` (move to a new UDP socket,
as after a network change: the connection, session and streams carry on; docs/protocol.md
§13). A peer from which nothing arrives for ``idle_timeout_s`` (14 s) is gone: the session
ends with ``IdleTimeout()``; keepalive PINGs (``keepalive_for``: every third of what a browser
waits, 1 s less) hold a live one.

Streams are trio streams: ``send_all`` (waits while unacknowledged bytes are over the
high-water mark), ``receive_some`` (b"" at end), ``send_eof``, ``reset(code)``,
``stop_sending(code)``, ``aclose``. Errors: ``trio.ClosedResourceError`` = we closed it;
``StreamReset`` (a ``trio.BrokenResourceError``) = the peer reset it, with its code;
``SessionClosed`` (also broken) = the session is gone. Every bound is in ``TransportLimits``
(``_config.py`` documents each policy).
"""

from ._certs import (
    TlsCredentials,
    certificate_sha256,
    generate_dev_certificate,
    write_private_file,
)
from ._client import connect_webtransport, open_quic_connection, open_session
from ._config import (
    IDLE_TIMEOUT_S,
    LOOPBACK_PACKET_SIZE,
    MAX_CONNECTIONS_PER_ADDRESS,
    MEDIA_PEER_ACK_DELAY_S,
    QUIC_CORE,
    QUIC_CORES,
    RETRY_ALWAYS,
    RETRY_THRESHOLD,
    ServerConfig,
    TransportLimits,
    keepalive_for,
    parse_origins,
)
from ._connection import Connection
from ._end import ClosedByPeer, ClosedLocally, ConnectionLost, IdleTimeout, SessionEnd
from ._endpoint import Endpoint
from ._errors import (
    ConnectFailed,
    DatagramTooLarge,
    RejectSession,
    SessionClosed,
    SessionRefused,
    StreamLimitExceeded,
    StreamReset,
)
from ._h3client import HTTP3Client, Response, ResponseTooLarge, open_http3_client
from ._server import (
    CLOSE_CODE_CANCELLED,
    CLOSE_CODE_HANDLER_ERROR,
    Route,
    WebTransportServer,
    serve_webtransport,
)
from ._session import ConnectRequest, SessionState, WebTransportSession
from ._stats import TransportStats
from ._streams import WebTransportReceiveStream, WebTransportSendStream, WebTransportStream
from ._wire import code_from_h3, code_to_h3

__all__ = [
    "CLOSE_CODE_CANCELLED",
    "CLOSE_CODE_HANDLER_ERROR",
    "IDLE_TIMEOUT_S",
    "LOOPBACK_PACKET_SIZE",
    "MAX_CONNECTIONS_PER_ADDRESS",
    "MEDIA_PEER_ACK_DELAY_S",
    "QUIC_CORE",
    "QUIC_CORES",
    "RETRY_ALWAYS",
    "RETRY_THRESHOLD",
    "ClosedByPeer",
    "ClosedLocally",
    "ConnectFailed",
    "ConnectRequest",
    "Connection",
    "ConnectionLost",
    "DatagramTooLarge",
    "Endpoint",
    "HTTP3Client",
    "IdleTimeout",
    "RejectSession",
    "Response",
    "ResponseTooLarge",
    "Route",
    "ServerConfig",
    "SessionClosed",
    "SessionEnd",
    "SessionRefused",
    "SessionState",
    "StreamLimitExceeded",
    "StreamReset",
    "TlsCredentials",
    "TransportLimits",
    "TransportStats",
    "WebTransportReceiveStream",
    "WebTransportSendStream",
    "WebTransportServer",
    "WebTransportSession",
    "WebTransportStream",
    "certificate_sha256",
    "code_from_h3",
    "code_to_h3",
    "connect_webtransport",
    "generate_dev_certificate",
    "keepalive_for",
    "open_http3_client",
    "open_quic_connection",
    "open_session",
    "parse_origins",
    "serve_webtransport",
    "write_private_file",
]
