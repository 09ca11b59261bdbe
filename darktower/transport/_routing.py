"""Where each QUIC event of a connection goes: to a stream, a session, H3Connection or the
connection itself (:func:`event_handlers`, one table per QUIC core shared by every connection:
a per-connection table of bound methods costs ~1.7 KB per connection).

Stream data is routed around and through H3Connection. Why: docs/decisions.md, "aioquic
internals touched".

Peer streams are classified by their first bytes: WebTransport streams (uni type 0x54, bidi
frame 0x41, then the session ID) go to our stream objects and are never parsed as HTTP/3;
everything else (control, QPACK, request streams) goes to H3Connection, whose events for
the CONNECT streams and plain requests are dispatched here.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from aioquic._buffer import Buffer, BufferReadError
from aioquic.h3 import events as h3e
from aioquic.quic import events as qe
from aioquic.quic.connection import stream_is_client_initiated, stream_is_unidirectional

from ._session import BadConnect, WebTransportSession, parse_connect
from ._streams import StreamState
from ._wire import PrefixKind, parse_prefix

if TYPE_CHECKING:
    from ._connection import Connection


def route_stream_data(conn: Connection, event: qe.StreamDataReceived) -> None:
    stream_id = event.stream_id
    state = conn.streams.get(stream_id)
    if state is not None:
        state.on_data(event.data, event.end_stream)
        return
    if stream_id in conn.rejected:
        return
    if stream_id in conn.h3._stream or stream_is_client_initiated(stream_id) == conn.is_client:
        route_h3(conn, event)
        return
    data = conn.pending_prefix.pop(stream_id, b"") + event.data
    uni = stream_is_unidirectional(stream_id)
    kind, session_id, length = parse_prefix(data, uni)
    if kind is PrefixKind.INCOMPLETE:
        if event.end_stream:
            conn.reject_peer_stream(stream_id, fin=True)
        else:
            conn.pending_prefix[stream_id] = data
    elif kind is PrefixKind.OTHER:
        rebuilt = conn.core.quic_events.StreamDataReceived  # the core's class: H3 checks it
        route_h3(conn, rebuilt(data=data, end_stream=event.end_stream, stream_id=stream_id))
    else:
        _new_peer_stream(conn, stream_id, session_id, length, data[length:], event.end_stream)


def _new_peer_stream(
    conn: Connection, stream_id: int, session_id: int, prefix: int, data: bytes, fin: bool
) -> None:
    session = conn.sessions.get(session_id)
    uni = stream_is_unidirectional(stream_id)
    if session is None or not session.can_take_stream():
        conn.reject_peer_stream(stream_id, fin)
        return
    state = StreamState(conn, session, stream_id, readable=True, writable=not uni, consumed=prefix)
    conn.streams[stream_id] = state
    session.offer_stream(state)
    state.on_data(data, fin)


def route_h3(conn: Connection, event: qe.QuicEvent) -> None:
    h3_events = conn.core.h3_events
    for h3_event in conn.h3.handle_event(event):
        stream_id = getattr(h3_event, "stream_id", None)
        if stream_id is None:
            continue
        handler = conn.request_handlers.get(stream_id)
        if handler is not None:
            handler(h3_event)
            continue
        session = conn.sessions.get(stream_id)
        if session is not None:
            if isinstance(h3_event, h3_events.DataReceived):
                session.on_connect_stream_data(h3_event.data, h3_event.stream_ended)
            continue
        if isinstance(h3_event, h3_events.HeadersReceived) and not conn.is_client:
            _on_request(conn, h3_event)


def _on_request(conn: Connection, event: h3e.HeadersReceived) -> None:
    try:
        request = parse_connect(event.headers)
    except BadConnect as exc:
        conn.refuse_request(event.stream_id, 400, "bad_connect", str(exc))
        return
    if request is None:
        # Not an extended CONNECT: this endpoint serves WebTransport only.
        conn.refuse_request(event.stream_id, 404, "not_connect")
        return
    if len(conn.sessions) >= conn.limits.max_sessions_per_connection:
        conn.refuse_request(event.stream_id, 429, "too_many_sessions")
        return
    session = WebTransportSession(conn, event.stream_id, request)
    conn.sessions[event.stream_id] = session
    if conn.on_session_request is None:
        session.reject(404)
    else:
        conn.on_session_request(session)


def _on_stream_reset(conn: Connection, event: qe.StreamReset) -> None:
    stream_id = event.stream_id
    state = conn.streams.get(stream_id)
    if state is not None:
        state.on_reset(event.error_code)
    elif stream_id in conn.rejected:
        return
    elif conn.pending_prefix.pop(stream_id, None) is not None:
        conn.reject_peer_stream(stream_id, fin=True)
    else:
        route_h3(conn, event)
        session = conn.sessions.get(stream_id)
        if session is not None:
            session.on_connect_stream_gone()


def _on_stop_sending(conn: Connection, event: qe.StopSendingReceived) -> None:
    state = conn.streams.get(event.stream_id)
    if state is not None:
        state.on_stop_sending(event.error_code)
    elif event.stream_id not in conn.rejected:
        route_h3(conn, event)
        session = conn.sessions.get(event.stream_id)
        if session is not None:
            session.on_connect_stream_gone()


def _on_datagram(conn: Connection, event: qe.DatagramFrameReceived) -> None:
    buf = Buffer(data=event.data)
    try:
        quarter = buf.pull_uint_var()
    except BufferReadError:
        return  # malformed: dropped
    session = conn.sessions.get(quarter * 4)
    if session is not None:
        session.on_datagram(event.data[buf.tell() :])


def _on_handshake_completed(conn: Connection, event: qe.HandshakeCompleted) -> None:
    conn.on_handshake_completed()


def _on_cid_issued(conn: Connection, event: qe.ConnectionIdIssued) -> None:
    conn.endpoint.add_cid(event.connection_id, conn)


def _on_cid_retired(conn: Connection, event: qe.ConnectionIdRetired) -> None:
    conn.endpoint.remove_cid(event.connection_id, conn)


def _on_terminated(conn: Connection, event: qe.ConnectionTerminated) -> None:
    conn.on_terminated(event.error_code, event.reason_phrase)


def event_handlers(events: ModuleType) -> dict[type, Callable[[Connection, Any], None]]:
    """The handler table keyed by one QUIC library's event classes (``events``: its
    ``quic.events`` module; _core.py builds one per core)."""
    return {
        events.StreamDataReceived: route_stream_data,
        events.DatagramFrameReceived: _on_datagram,
        events.StreamReset: _on_stream_reset,
        events.StopSendingReceived: _on_stop_sending,
        events.HandshakeCompleted: _on_handshake_completed,
        events.ConnectionIdIssued: _on_cid_issued,
        events.ConnectionIdRetired: _on_cid_retired,
        events.ConnectionTerminated: _on_terminated,
    }


# aioquic's (the default core's) table.
QUIC_EVENT_HANDLERS = event_handlers(qe)
