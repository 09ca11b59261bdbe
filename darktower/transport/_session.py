"""A WebTransport session: streams, datagrams, close with a code and reason."""

from __future__ import annotations

import enum
import re
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs
import trio
from aioquic.buffer import encode_uint_var, size_uint_var

from ._config import MAX_CONNECT_AUTHORITY, MAX_CONNECT_PATH
from ._end import ClosedByPeer, ClosedLocally, SessionEnd
from ._errors import DatagramTooLarge, SessionClosed, StreamLimitExceeded
from ._streams import (
    IncomingStream,
    StreamState,
    WebTransportReceiveStream,
    WebTransportSendStream,
    WebTransportStream,
)
from ._wire import (
    CAPSULE_CLOSE_SESSION,
    H3_NO_ERROR,
    CapsuleError,
    CapsuleParser,
    decode_close,
    encode_close,
)

if TYPE_CHECKING:
    from ._connection import Connection
    from ._stats import TransportStats


@attrs.frozen
class ConnectRequest:
    """The extended CONNECT that opened a session, as the server received it."""

    path: str
    query: Mapping[str, str]
    authority: str
    origin: str | None
    headers: tuple[tuple[str, str], ...]


class BadConnect(ValueError):
    """An extended CONNECT that fails a check (see ``parse_connect``); answered 400."""


# Bytes of a QUIC packet that a DATAGRAM frame's payload cannot use: first byte, the longest
# connection ID (20), packet number (4), AEAD tag (16), frame type (1), length varint (2).
DATAGRAM_PACKET_OVERHEAD = 44
# A session we close sends its CLOSE_WEBTRANSPORT_SESSION capsule at once and the FIN of its
# CONNECT stream this much later: Chromium tears a server-closed session down in a task of its
# own, and a CONNECT stream already finished both ways by then crashes the page's renderer
# (docs/decisions.md, "The FIN after a close capsule waits").
CLOSE_FIN_DELAY_S = 0.25
# Pseudo-headers an extended CONNECT carries (RFC 9220, RFC 9114 section 4.3.1).
_CONNECT_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path", b":protocol"))
# :path is origin-form (RFC 3986): the path of pchars and "/", then an optional query of
# printable ASCII without space or "#" (browsers leave some characters unescaped there).
_PATH = re.compile(rb"/[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*(?:\?[\x21\x22\x24-\x7e]*)?\Z")
# :authority is host[:port]: a reg-name or IPv4 address, or an IPv6 literal; no userinfo.
_AUTHORITY = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::(?P<port>[0-9]{1,5}))?\Z"
)


def parse_connect(headers: list[tuple[bytes, bytes]]) -> ConnectRequest | None:
    """The request of a WebTransport extended CONNECT, or None for a request that is not a
    CONNECT. Raises BadConnect for a CONNECT that is not a well-formed WebTransport one:
    pseudo-headers duplicated, unknown or after regular headers; ``:protocol`` not
    ``webtransport``; ``:scheme`` not ``https``; ``:path`` not "/" + printable ASCII of at most
    ``MAX_CONNECT_PATH`` bytes; ``:authority`` not a host[:port]; two ``origin`` headers.
    Pure: never raises anything else, whatever the bytes (a fuzz property checks it)."""
    pseudo: dict[bytes, bytes] = {}
    plain: list[tuple[str, str]] = []
    for name, value in headers:
        if name[:1] == b":":
            if plain or name in pseudo:
                if pseudo.get(b":method") == b"CONNECT":
                    raise BadConnect(f"pseudo-header {name!r} repeated or misplaced")
                return None
            pseudo[name] = value
        else:
            plain.append((name.decode("latin-1"), value.decode("latin-1")))
    if pseudo.get(b":method") != b"CONNECT":
        return None
    if not pseudo.keys() <= _CONNECT_PSEUDO:
        raise BadConnect(f"unknown pseudo-headers {sorted(pseudo.keys() - _CONNECT_PSEUDO)}")
    if pseudo.get(b":protocol") != b"webtransport":
        raise BadConnect("not a WebTransport CONNECT (:protocol)")
    if pseudo.get(b":scheme") != b"https":
        raise BadConnect(":scheme is not https")
    raw_path = pseudo.get(b":path", b"")
    if len(raw_path) > MAX_CONNECT_PATH or _PATH.match(raw_path) is None:
        raise BadConnect(":path is not an origin-form path of at most 8 KiB")
    authority = pseudo.get(b":authority", b"")
    match = _AUTHORITY.match(authority) if len(authority) <= MAX_CONNECT_AUTHORITY else None
    if match is None or (match["port"] is not None and int(match["port"]) > 0xFFFF):
        raise BadConnect(":authority is not a host[:port]")
    origins = [v for k, v in plain if k == "origin"]
    if len(origins) > 1:
        raise BadConnect("more than one origin header")
    path, _, query = raw_path.decode("ascii").partition("?")
    return ConnectRequest(
        path=path,
        query=dict(urllib.parse.parse_qsl(query)),
        authority=authority.decode("ascii"),
        origin=origins[0] if origins else None,
        headers=tuple(plain),
    )


class SessionState(enum.Enum):
    PENDING = enum.auto()  # CONNECT sent or received, not answered yet
    OPEN = enum.auto()
    CLOSED = enum.auto()


class WebTransportSession:
    """One WebTransport session over a QUIC connection (server or client side).

    Buffers are bounded: incoming streams wait in an accept queue of ``accept_queue_size``
    (a stream beyond it, or beyond ``max_streams_per_session`` open streams, is rejected with
    a reset); incoming datagrams in a queue of ``datagram_queue_size`` datagrams and
    ``datagram_queue_bytes`` bytes that drops the oldest.
    """

    def __init__(self, conn: Connection, session_id: int, request: ConnectRequest) -> None:
        self._conn = conn
        self.session_id = session_id
        self.request = request
        self.state = SessionState.PENDING
        self._limits = conn.limits
        self._streams: set[StreamState] = set()
        # Lists, not deques: both queues are short (bounded above) and usually empty, and an
        # empty deque costs ~600 bytes per session where an empty list costs 56.
        self._incoming: list[IncomingStream] = []
        self._incoming_wait: trio.Event | None = None
        self._datagrams: list[bytes] = []
        self._datagram_bytes = 0  # of those queued (bounded by datagram_queue_bytes)
        self._datagram_wait: trio.Event | None = None
        self._datagram_prefix = encode_uint_var(session_id // 4)
        self._capsules = CapsuleParser()
        self._closed = trio.Event()
        self._error: BaseException | None = None
        self._connect_ended = False  # the peer's side of the CONNECT stream is finished
        self.peer_close_code: int | None = None
        self.peer_close_reason: str | None = None
        self.local_close_code: int | None = None
        # Why the session ended (None while it has not): set once, where the transport learns it.
        self.end: SessionEnd | None = None
        self.datagrams_dropped = 0
        # Set by the server: the scope of the handler's nursery, cancelled when the session ends.
        self.cancel_scope: trio.CancelScope | None = None
        conn.session_started()

    # --- request --------------------------------------------------------------------------
    @property
    def path(self) -> str:
        return self.request.path

    @property
    def query(self) -> Mapping[str, str]:
        return self.request.query

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return self.request.headers

    @property
    def origin(self) -> str | None:
        return self.request.origin

    @property
    def is_closed(self) -> bool:
        return self.state is SessionState.CLOSED

    @property
    def open_stream_count(self) -> int:
        return len(self._streams)

    @property
    def unidirectional_stream_credit(self) -> int:
        """Uni streams the peer's MAX_STREAMS still lets this side open; at 0 a new one waits,
        blocked, for credit, holding what is written to it."""
        return self._conn.quic.dt_uni_stream_credit()

    @property
    def local_address(self) -> tuple[str, int]:
        """The local UDP socket's address (it changes when the client migrates)."""
        return self._conn.endpoint.local_address

    @property
    def peer_address(self) -> tuple[str, int] | None:
        """The peer's address now (on a server: the client's, which migration changes)."""
        addr = self._conn.peer_address
        return None if addr is None else (str(addr[0]), int(addr[1]))

    def delay_sends(self, seconds: float) -> None:
        """Let what this side sends on the session's connection wait up to ``seconds``
        (bounded by the transport) to leave in fewer, fuller packets: for a peer that takes
        bulk media and does not need it at once (a recording, docs/protocol.md §7)."""
        self._conn.delay_sends(seconds)

    def migrate(self, *, new_connection_id: bool = True) -> tuple[str, int]:
        """Client side: move the session's QUIC connection to a new local UDP socket, as after
        a network change; return its address. The session and its streams carry on
        (``Connection.migrate``). Raises RuntimeError on a server session."""
        return self._conn.migrate(new_connection_id=new_connection_id)

    def transport_stats(self) -> TransportStats:
        """Packet counts (sent, lost, received) of the QUIC connection under this session."""
        return self._conn.transport_stats()

    # --- streams --------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.state is SessionState.CLOSED:
            if self._error is not None:
                raise self._error
            raise trio.ClosedResourceError("session closed")
        if self.state is SessionState.PENDING:
            raise trio.ClosedResourceError("session not accepted yet")

    def _new_local_stream(self, unidirectional: bool) -> StreamState:
        self._check_open()
        if len(self._streams) >= self._limits.max_streams_per_session:
            raise StreamLimitExceeded(
                f"session has {len(self._streams)} open streams (limit reached)"
            )
        if not self._conn.quic.dt_can_open(unidirectional):
            raise StreamLimitExceeded("the peer's MAX_STREAMS lets no stream open yet (qh3)")
        state = self._conn.open_stream(self, unidirectional)
        self._streams.add(state)
        return state

    async def open_bidirectional_stream(self) -> WebTransportStream:
        """Open a bidirectional stream. Raises StreamLimitExceeded, SessionClosed."""
        await trio.lowlevel.checkpoint()
        return WebTransportStream(self._new_local_stream(False))

    async def open_unidirectional_stream(self) -> WebTransportSendStream:
        """Open a unidirectional (send-only) stream. Raises StreamLimitExceeded, SessionClosed."""
        await trio.lowlevel.checkpoint()
        return WebTransportSendStream(self._new_local_stream(True))

    async def accept_stream(self) -> IncomingStream:
        """Wait for the next stream the peer opened. Raises SessionClosed once the session ends."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._incoming:
            self._check_open_or_pending()
            self._incoming_wait = event = trio.Event()
            try:
                await event.wait()
            finally:
                self._incoming_wait = None
        stream = self._incoming.pop(0)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return stream

    def _check_open_or_pending(self) -> None:
        if self.state is SessionState.CLOSED:
            self._check_open()

    # --- datagrams ------------------------------------------------------------------------
    @property
    def max_datagram_size(self) -> int:
        """The largest datagram payload that fits in one QUIC packet to this peer."""
        remote = self._conn.quic._remote_max_datagram_frame_size
        if remote is None:
            return 0
        by_packet = self._conn.limits.packet_size - DATAGRAM_PACKET_OVERHEAD
        by_peer = remote - 1 - 8  # frame type and the longest length varint
        return max(0, min(by_packet, by_peer) - size_uint_var(self.session_id // 4))

    def send_datagram(self, data: bytes) -> None:
        """Queue a datagram; never blocks. When the send queue is full the oldest queued datagram
        is dropped (counted on the connection). Raises DatagramTooLarge if it cannot fit in one
        packet, SessionClosed / ClosedResourceError once the session ended."""
        self._check_open()
        limit = self.max_datagram_size
        if len(data) > limit:
            raise DatagramTooLarge(len(data), limit)
        self._conn.queue_datagram(self._datagram_prefix + data)

    async def receive_datagram(self) -> bytes:
        """Wait for the next datagram. Raises SessionClosed once the session ends."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._datagrams:
            self._check_open_or_pending()
            self._datagram_wait = event = trio.Event()
            try:
                await event.wait()
            finally:
                self._datagram_wait = None
        data = self._datagrams.pop(0)
        self._datagram_bytes -= len(data)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return data

    # --- close ----------------------------------------------------------------------------
    async def close(self, code: int = 0, reason: str = "") -> None:
        """Close the session: CLOSE_WEBTRANSPORT_SESSION capsule with ``code`` and ``reason``,
        every stream reset. Idempotent; completes even when cancelled (nothing waits)."""
        self.close_nowait(code, reason)
        await trio.lowlevel.checkpoint()

    def close_nowait(self, code: int = 0, reason: str = "") -> None:
        if self.state is SessionState.CLOSED:
            return
        if self.state is SessionState.OPEN:
            self._conn.send_data(self.session_id, encode_close(code, reason), False)
            try:
                self._conn.spawn(self._fin_later)
            except RuntimeError:  # the connection is ending: its CONNECTION_CLOSE ends all
                self._conn.send_data(self.session_id, b"", True)
        self.local_close_code = code
        # We closed it: further use is a ClosedResourceError, not a broken session.
        self._finish(
            trio.ClosedResourceError(f"session closed locally (code {code})"),
            ClosedLocally(code, reason),
        )

    async def _fin_later(self) -> None:
        # Owned by the connection's nursery: ends with it, or after the delay.
        await trio.sleep(CLOSE_FIN_DELAY_S)
        self._conn.send_data(self.session_id, b"", True)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    # --- called by the connection / server --------------------------------------------------
    def accept(self) -> None:
        if self.state is SessionState.PENDING:
            self.state = SessionState.OPEN
            self._conn.send_headers(
                self.session_id,
                [(b":status", b"200"), (b"sec-webtransport-http3-draft", b"draft02")],
                False,
            )

    def reject(self, status: int) -> None:
        if self.state is SessionState.PENDING:
            self._conn.send_headers(self.session_id, [(b":status", str(status).encode())], True)
            # Ask the peer to end its side too, so the CONNECT stream does not linger.
            self._conn.stop_stream(self.session_id, H3_NO_ERROR)
            self._finish(
                SessionClosed(0, "", message=f"session rejected with {status}"),
                ClosedLocally(0, f"rejected with {status}"),
            )

    def reject_answered(self) -> None:
        """Client: the server refused the CONNECT; end our side of the stream."""
        if self.state is SessionState.PENDING:
            self._conn.send_data(self.session_id, b"", True)
            self._finish(SessionClosed(0, "", message="session refused"), ClosedByPeer(0, ""))

    def check_usable(self) -> None:
        """Raise the session's error if it is closed."""
        if self.state is SessionState.CLOSED:
            self._check_open()

    def opened(self) -> None:
        """Client: the server answered 200."""
        if self.state is SessionState.PENDING:
            self.state = SessionState.OPEN

    def can_take_stream(self) -> bool:
        return (
            self.state is not SessionState.CLOSED
            and len(self._streams) < self._limits.max_streams_per_session
            and len(self._incoming) < self._limits.accept_queue_size
        )

    def offer_stream(self, state: StreamState) -> None:
        self._streams.add(state)
        if state.send_closed:
            self._incoming.append(WebTransportReceiveStream(state))
        else:
            self._incoming.append(WebTransportStream(state))
        if self._incoming_wait is not None:
            self._incoming_wait.set()

    def forget_stream(self, state: StreamState) -> None:
        self._streams.discard(state)

    def on_datagram(self, data: bytes) -> None:
        if self.state is not SessionState.OPEN:
            return
        limits = self._limits
        if len(data) > limits.datagram_queue_bytes:
            self.datagrams_dropped += 1
            return
        queue = self._datagrams
        while queue and (
            len(queue) >= limits.datagram_queue_size
            or self._datagram_bytes + len(data) > limits.datagram_queue_bytes
        ):
            self._datagram_bytes -= len(queue.pop(0))
            self.datagrams_dropped += 1
        queue.append(data)
        self._datagram_bytes += len(data)
        if self._datagram_wait is not None:
            self._datagram_wait.set()

    def on_connect_stream_data(self, data: bytes, ended: bool) -> None:
        try:
            capsules = self._capsules.feed(data) if data else []
        except CapsuleError:
            self.close_nowait(1, "malformed capsule")
            return
        for capsule in capsules:
            if capsule.type == CAPSULE_CLOSE_SESSION and self.state is not SessionState.CLOSED:
                try:
                    code, reason = decode_close(capsule.value)
                except CapsuleError:
                    code, reason = 0, ""
                self._peer_closed(code, reason)
        if ended:
            self._connect_ended = True
            self._peer_closed(0, "")

    def on_connect_stream_gone(self) -> None:
        self._connect_ended = True
        self._peer_closed(0, "")

    def on_connection_lost(self, error: SessionClosed, end: SessionEnd) -> None:
        self._connect_ended = True
        self._finish(error, end)

    def _peer_closed(self, code: int, reason: str) -> None:
        if self.state is SessionState.CLOSED:
            if self._connect_ended:
                self._conn.forget_session(self)
            return
        self.peer_close_code = code
        self.peer_close_reason = reason
        # Our answer: end our side of the CONNECT stream too.
        self._conn.send_data(self.session_id, b"", True)
        self._finish(
            SessionClosed(code, reason, message="session closed by peer"),
            ClosedByPeer(code, reason),
        )

    def _finish(self, error: BaseException, end: SessionEnd) -> None:
        if self.state is not SessionState.CLOSED:
            self.state = SessionState.CLOSED
            self.end = end
            self._conn.session_ended()
        self._error = error
        # Cancel the handler first: its blocked tasks then see Cancelled, not the error below.
        if self.cancel_scope is not None:
            self.cancel_scope.cancel()
        for state in list(self._streams):
            state.on_session_gone(error)
        self._streams.clear()
        # Streams never accepted are dropped with their session.
        self._incoming.clear()
        self._datagrams.clear()
        self._datagram_bytes = 0
        if self._incoming_wait is not None:
            self._incoming_wait.set()
        if self._datagram_wait is not None:
            self._datagram_wait.set()
        self._closed.set()
        # Keep routing CONNECT-stream events to us until the peer has finished it, so its FIN is
        # consumed here and not taken for a new request.
        if self._connect_ended or self._conn.terminated.is_set():
            self._conn.forget_session(self)
