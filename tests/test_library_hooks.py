"""The private hooks of hypercorn, aioquic and grpclib that ``darktower`` overrides or reads
still exist in the installed versions.

Each row names one hook and the module that uses it; after an upgrade a failure names the hook
to port (docs/decisions.md: "aioquic internals touched", "hypercorn's QUIC listener is
replaced"). Only then move the version pin in pyproject.toml.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import inspect
import pathlib
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from aioquic import tls
from aioquic.h3.connection import H3Connection
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection, QuicConnectionState, QuicReceiveContext
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream
from grpclib.server import Server
from hypercorn.config import Config
from hypercorn.protocol.h3 import H3Protocol
from hypercorn.protocol.quic import QuicProtocol
from hypercorn.trio.task_group import TaskGroup
from hypercorn.trio.tcp_server import TCPServer

from darktower.transport import generate_dev_certificate


@attrs.frozen
class Hook:
    library: str  # the distribution, for its installed version in the message
    name: str  # what darktower relies on
    user: str  # where
    check: Callable[[], object]  # raises (or returns False) when the hook is gone


def _has(obj: object, *attrs: str) -> object:
    for attr in attrs:
        if not hasattr(obj, attr):
            raise AttributeError(attr)
    return True


def _params(func: Any, *names: str) -> bool:
    """``func`` takes (at least) parameters called ``names``: they are passed by name or in
    this order by darktower."""
    params = list(inspect.signature(func).parameters)
    return all(name in params for name in names)


def _positional(func: Any, *names: str) -> bool:
    """``func``'s parameters after ``self`` are exactly ``names``, in this order: darktower
    passes them positionally."""
    return list(inspect.signature(func).parameters)[1:] == list(names)


@functools.cache
def _quic() -> QuicConnection:
    quic = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=["h3"]))
    quic.connect(("127.0.0.1", 4433), now=0.0)
    return quic


def _pto_backoff_is_pto_times_2_to_the_count() -> bool:
    """A client's Initial in flight arms the probe timer at PTO x 2**_pto_count after it was
    sent, and a fired timer raises the count by one."""
    quic = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=["h3"]))
    quic.connect(("127.0.0.1", 4433), now=0.0)
    quic.datagrams_to_send(now=0.0)
    recovery = quic._loss
    pto = recovery.get_probe_timeout(include_max_ack_delay=recovery.handshake_confirmed)
    armed = []
    for count in (0, 3):
        recovery._pto_count = count
        armed.append(quic.get_timer())
    recovery._pto_count = 0
    quic.get_timer()
    quic.handle_timer(now=pto)
    return armed == [pto, pto * 8] and recovery._pto_count == 1


def _quic_protocol(directory: str) -> QuicProtocol:
    certfile, keyfile = generate_dev_certificate().write(directory)
    config = Config()
    config.certfile, config.keyfile = str(certfile), str(keyfile)
    return QuicProtocol(None, config, None, None, {}, None, None)  # type: ignore[arg-type]


def _h3_protocol() -> H3Protocol:
    args: list[Any] = [None] * 9
    args[1] = Config()
    args[7] = QuicConnection(configuration=QuicConfiguration(is_client=True))
    return H3Protocol(*args)


_QUIC = "darktower/transport/_connection.py"
_HTTP_QUIC = "darktower/transport/_http_quic.py"
_HTTP_STREAMS = "darktower/transport/_http_streams.py"

HOOKS = [
    # --- aioquic -----------------------------------------------------------------------------
    Hook(
        "aioquic",
        "module aioquic._buffer (Buffer, BufferReadError)",
        "transport/ (_wire, _routing, _endpoint, _quic, _http_quic), loadtest/_flood.py",
        lambda: _has(importlib.import_module("aioquic._buffer"), "BufferReadError"),
    ),
    Hook(
        "aioquic",
        "QuicConnection._write_stream_limits(builder, space, stream), _write_connection_limits"
        "(builder, space) (ACK_FREQUENCY rides there), _ack_delay; QuicReceiveContext.time",
        "transport/_quic.py (overridden; the ACK-frequency extension)",
        lambda: (
            _positional(QuicConnection._write_stream_limits, "builder", "space", "stream")
            and _positional(QuicConnection._write_connection_limits, "builder", "space")
            and isinstance(_quic()._ack_delay, float)
            and "time" in QuicReceiveContext.__dataclass_fields__
        ),
    ),
    Hook(
        "aioquic",
        "QuicConnection._on_max_stream_data_delivery",
        "transport/_quic.py",
        lambda: _has(QuicConnection, "_on_max_stream_data_delivery"),
    ),
    Hook(
        "aioquic",
        "aioquic.quic.connection.MAX_STREAM_DATA_FRAME_CAPACITY",
        "transport/_quic.py",
        lambda: _has(
            importlib.import_module("aioquic.quic.connection"), "MAX_STREAM_DATA_FRAME_CAPACITY"
        ),
    ),
    Hook(
        "aioquic",
        "QuicStream.max_stream_data_local / max_stream_data_local_sent",
        "transport/_quic.py",
        lambda: _has(QuicStream(0), "max_stream_data_local", "max_stream_data_local_sent"),
    ),
    Hook(
        "aioquic",
        "QuicConnection._confirm_handshake(), _crypto_buffers; _initialize(peer_cid) creating"
        " tls, a client's (_is_client) key shares from tls.Context._supported_groups",
        "transport/_quic.py (overridden, replaced; a client's two key shares)",
        lambda: (
            _positional(QuicConnection._confirm_handshake)
            and isinstance(_quic()._crypto_buffers, dict)
            and _positional(QuicConnection._initialize, "peer_cid")
            and _quic()._is_client
            and {tls.Group.SECP256R1, tls.Group.X25519} <= set(_quic().tls._supported_groups)
        ),
    ),
    Hook(
        "aioquic",
        "QuicConnection.__frame_handlers ({type: (bound method, epochs)})",
        "transport/_quic.py (shared table)",
        lambda: all(
            callable(h) and isinstance(e, frozenset)
            for h, e in QuicConnection(
                configuration=QuicConfiguration(is_client=True)
            )._QuicConnection__frame_handlers.values()  # type: ignore[attr-defined]
        ),
    ),
    Hook(
        "aioquic",
        "QuicConnection._streams (dict: _stream_table.py replaces it)",
        _QUIC,
        lambda: isinstance(_quic()._streams, dict),
    ),
    Hook(
        "aioquic",
        "QuicStream.max_stream_data_remote",
        _QUIC,
        lambda: _has(QuicStream(0), "max_stream_data_remote"),
    ),
    Hook(
        "aioquic",
        "QuicStreamSender._buffer_start / _buffer_stop",
        _QUIC,
        lambda: _has(QuicStream(0).sender, "_buffer_start", "_buffer_stop"),
    ),
    Hook(
        "aioquic",
        "H3Connection._quic / QuicConnection._streams / _state (QuicConnectionState) / "
        "QuicStreamSender._buffer_start, _buffer_stop, _reset_error_code",
        f"{_HTTP_STREAMS} (an HTTP/3 body waits for room in its stream's send buffer)",
        lambda: (
            H3Connection(_quic())._quic is _quic()
            and isinstance(_quic()._streams, dict)
            and isinstance(_quic()._state, QuicConnectionState)
            and _has(QuicStream(0).sender, "_buffer_start", "_buffer_stop")
            and QuicStream(0).sender._reset_error_code is None
        ),
    ),
    Hook(
        "aioquic",
        "QuicConnection._datagrams_pending (deque)",
        _QUIC,
        lambda: hasattr(_quic()._datagrams_pending, "popleft"),
    ),
    Hook(
        "aioquic",
        "QuicConnection._remote_max_datagram_frame_size",
        _QUIC,
        lambda: _has(_quic(), "_remote_max_datagram_frame_size"),
    ),
    Hook(
        "aioquic",
        "H3Connection._stream (dict)",
        f"{_QUIC}, transport/_routing.py",
        lambda: isinstance(H3Connection(_quic())._stream, dict),
    ),
    Hook(
        "aioquic",
        "tls.Context._peer_certificate",
        "transport/_client.py",
        lambda: _has(tls.Context(is_client=True), "_peer_certificate"),
    ),
    Hook("aioquic", "QuicConnection._close_at", _HTTP_QUIC, lambda: _has(_quic(), "_close_at")),
    Hook(
        "aioquic",
        "QuicConnection._close_at / _close_event (the idle-timeout test in handle_timer)",
        "transport/_quic.py",
        lambda: _has(_quic(), "_close_at", "_close_event"),
    ),
    Hook(
        "aioquic",
        "QuicConnection.receive_datagram(data, addr, now) / _ack_eliciting_sent_since_receipt "
        "(the idle timer restarts only on receipt)",
        "transport/_quic.py (overridden)",
        lambda: (
            _positional(QuicConnection.receive_datagram, "data", "addr", "now")
            and isinstance(_quic()._ack_eliciting_sent_since_receipt, bool)
        ),
    ),
    Hook(
        "aioquic",
        "QuicConnection._write_new_connection_id_frame(builder, connection_id)",
        "transport/_quic.py (overridden: the endpoint routes an issued id at once)",
        lambda: _positional(
            QuicConnection._write_new_connection_id_frame, "builder", "connection_id"
        ),
    ),
    Hook(
        "aioquic",
        "QuicConnection._handle_connection_close_frame(context, frame_type, buf)",
        "transport/_quic.py (overridden)",
        lambda: _positional(
            QuicConnection._handle_connection_close_frame, "context", "frame_type", "buf"
        ),
    ),
    Hook(
        "aioquic",
        "QuicConnection._loss (a QuicPacketRecovery)",
        "transport/_stats.py",
        lambda: type(_quic()._loss).__name__ == "QuicPacketRecovery",
    ),
    Hook(
        "aioquic",
        "QuicPacketRecovery._on_packets_lost(*, congestion_event, now, packets, "
        "persistent_congestion, space)",
        "transport/_stats.py (overridden)",
        lambda: _params(
            type(_quic()._loss)._on_packets_lost,
            "congestion_event",
            "now",
            "packets",
            "persistent_congestion",
            "space",
        ),
    ),
    Hook(
        "aioquic",
        "QuicPacketRecovery._rtt_smoothed, _variance, _initialized, _pacer (the RTT update)",
        "transport/_stats.py; transport/_quic.py",
        lambda: (
            _has(_quic()._loss, "_rtt_smoothed", "_rtt_variance", "_rtt_initialized")
            and _params(_quic()._loss._pacer.update_rate, "congestion_window", "smoothed_rtt")
            and _params(_quic()._loss._pacer.next_send_time, "now")
        ),
    ),
    Hook(
        "aioquic",
        "QuicConnection._packet_number",
        "transport/_stats.py",
        lambda: isinstance(_quic()._packet_number, int),
    ),
    Hook(
        "aioquic",
        "QuicConnection._spaces[ONE_RTT].largest_received_packet",
        "transport/_stats.py",
        lambda: (
            tls.Epoch.ONE_RTT in _quic()._spaces
            and _has(QuicPacketSpace(), "largest_received_packet")
        ),
    ),
    Hook(
        "aioquic",
        "QuicPacketRecovery._rtt_latest, _cc.bytes_in_flight, max_ack_delay; QuicPacketSpace"
        ".sent_packets, ack_at; QuicConnection._payload_received(context, plain, ...),"
        " _write_ack_frame(builder, space, now)",
        "transport/_stats.py (RTT samples); transport/_quic.py (overridden: media ACK policy)",
        lambda: (
            isinstance(_quic()._loss._rtt_latest, float)
            and isinstance(_quic()._loss.max_ack_delay, float)
            and isinstance(QuicPacketSpace().sent_packets, dict)
            and isinstance(_quic()._loss._cc.bytes_in_flight, int)
            and _params(QuicConnection._payload_received, "context", "plain")
            and _positional(QuicConnection._write_ack_frame, "builder", "space", "now")
            and _has(QuicPacketSpace(), "ack_at")
        ),
    ),
    Hook(
        "aioquic",
        "QuicPacketRecovery._pto_count (the PTO is get_probe_timeout(include_max_ack_delay=) "
        "x 2**_pto_count, raised in handle_timer) / handshake_confirmed",
        "transport/_quic.py (capped in handle_timer)",
        lambda: (
            _params(type(_quic()._loss).get_probe_timeout, "include_max_ack_delay")
            and isinstance(_quic()._loss.handshake_confirmed, bool)
            and _pto_backoff_is_pto_times_2_to_the_count()
        ),
    ),
    # --- hypercorn ---------------------------------------------------------------------------
    Hook(
        "hypercorn",
        "hypercorn.protocol.quic._Connection(cids, quic, task, h3)",
        _HTTP_QUIC,
        lambda: (
            [
                f.name
                for f in dataclasses.fields(
                    importlib.import_module("hypercorn.protocol.quic")._Connection
                )
            ]
            == ["cids", "quic", "task", "h3"]
        ),
    ),
    Hook(
        "hypercorn",
        "QuicProtocol(app, config, context, task_group, state, server, send)",
        _HTTP_QUIC,
        lambda: _positional(
            QuicProtocol.__init__,
            "app",
            "config",
            "context",
            "task_group",
            "state",
            "server",
            "send",
        ),
    ),
    Hook(
        "hypercorn",
        "QuicProtocol._handle_events(connection, client)",
        f"{_HTTP_QUIC} (overridden)",
        lambda: _positional(QuicProtocol._handle_events, "connection", "client"),
    ),
    Hook(
        "hypercorn",
        "QuicProtocol._handle_timer(timer, connection)",
        f"{_HTTP_QUIC} (overridden)",
        lambda: _positional(QuicProtocol._handle_timer, "timer", "connection"),
    ),
    Hook(
        "hypercorn",
        "QuicProtocol.send_all(connection)",
        f"{_HTTP_QUIC} (overridden)",
        lambda: _positional(QuicProtocol.send_all, "connection"),
    ),
    Hook(
        "hypercorn",
        "QuicProtocol.handle(event)",
        f"{_HTTP_QUIC} (overridden)",
        lambda: _positional(QuicProtocol.handle, "event"),
    ),
    Hook("hypercorn", "QuicProtocol.idle", _HTTP_QUIC, lambda: _has(QuicProtocol, "idle")),
    Hook(
        "hypercorn",
        "H3Protocol(app, config, context, task_group, state, client, server, quic, send)",
        _HTTP_QUIC,
        lambda: _positional(
            H3Protocol.__init__,
            "app",
            "config",
            "context",
            "task_group",
            "state",
            "client",
            "server",
            "quic",
            "send",
        ),
    ),
    Hook(
        "hypercorn",
        "H3Protocol.stream_send(event)",
        f"{_HTTP_STREAMS} (overridden)",
        lambda: _positional(H3Protocol.stream_send, "event"),
    ),
    Hook(
        "hypercorn",
        "H3Protocol.streams (dict, replaced by a guarded table)",
        _HTTP_STREAMS,
        lambda: isinstance(_h3_protocol().streams, dict),
    ),
    Hook(
        "hypercorn",
        "trio TaskGroup._nursery",
        f"{_HTTP_QUIC} (cancelled at shutdown)",
        lambda: _has(TaskGroup(), "_nursery"),
    ),
    Hook(
        "hypercorn",
        "trio TaskGroup.spawn_app(app, config, scope, send)",
        f"{_HTTP_STREAMS} (overridden)",
        lambda: _positional(TaskGroup.spawn_app, "app", "config", "scope", "send"),
    ),
    Hook(
        "hypercorn",
        "trio TCPServer._read_data()",
        "transport/_http_tcp.py (overridden)",
        lambda: _positional(TCPServer._read_data),
    ),
    Hook(
        "hypercorn",
        "trio TCPServer.protocol_send(event) / send_lock / stream, tcp_server.MAX_RECV",
        "transport/_http_tcp.py (overridden)",
        lambda: (
            _positional(TCPServer.protocol_send, "event")
            and _has(TCPServer(None, Config(), None, None, None), "send_lock")  # type: ignore[arg-type]
            and isinstance(importlib.import_module("hypercorn.trio.tcp_server").MAX_RECV, int)
        ),
    ),
    Hook(
        "hypercorn",
        "trio TCPServer.idle_task",
        "transport/_http_tcp.py",
        lambda: _has(TCPServer(None, Config(), None, None, None), "idle_task"),
    ),  # type: ignore[arg-type]
    Hook(
        "hypercorn",
        "Config._quic_addresses (the Alt-Svc header)",
        "transport/http_server.py",
        lambda: _alt_svc_from_quic_addresses(),
    ),
    # --- grpclib -----------------------------------------------------------------------------
    Hook(
        "grpclib",
        "Server._protocol_factory()",
        "transport/_rpc_server.py (overridden)",
        lambda: _positional(Server._protocol_factory),
    ),
]


def _alt_svc_from_quic_addresses() -> bool:
    config = Config()
    config._quic_addresses = [("127.0.0.1", 4433)]
    return any(
        name == b"alt-svc" and b':4433"' in value for name, value in config.response_headers("h2")
    )


@pytest.mark.parametrize("hook", HOOKS, ids=lambda hook: f"{hook.library}:{hook.name}")
def test_library_hook_exists(hook: Hook) -> None:
    version = importlib.metadata.version(hook.library)
    try:
        ok = hook.check()
    except (AttributeError, KeyError, TypeError, ValueError, ImportError) as exc:
        ok, why = False, f" ({type(exc).__name__}: {exc})"
    else:
        why = ""
    assert ok, (
        f"{hook.library} {version} no longer has {hook.name}{why}, which {hook.user} relies on: "
        "port that hook (docs/decisions.md lists them), then move the pin in pyproject.toml"
    )


def test_hypercorn_quic_protocol_has_the_attributes_the_listener_uses(
    tmp_path: pathlib.Path,
) -> None:
    # _TrackingQuicProtocol reads these on itself (set by hypercorn's __init__).
    protocol = _quic_protocol(str(tmp_path))
    names = "app config context connections quic_config send server state task_group".split()
    missing = [name for name in names if not hasattr(protocol, name)]
    assert not missing, (
        f"hypercorn {importlib.metadata.version('hypercorn')}: QuicProtocol no longer sets "
        f"{missing}, which {_HTTP_QUIC} relies on"
    )
