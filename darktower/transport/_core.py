"""The QUIC core under the trio driver: aioquic (the default) or qh3 (an optional extra).

``TransportLimits.quic_core`` names it: "aioquic", "qh3" (``pip install darktower[qh3]``) or
"auto" (qh3 when it is installed, else aioquic). The driver takes from the core only what
differs between the two libraries: the connection class (each with the same ``dt_*``
surface, _quic.py and _quic_qh3.py), the H3Connection class, the event classes (the handler
table is keyed by the core's own classes: an event of the other library would match none),
the errors a stream operation raises, the QuicConfiguration, and the loss counters.

Wire parsing (packet headers, Retry, Version Negotiation, varints) stays aioquic's whatever
the core: aioquic remains a required dependency, and the GC's HTTP/3 listener runs on it.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from ._connection import Connection
    from ._stats import TransportStats

INSTALL_HINT = "the qh3 QUIC core needs the qh3 extra: pip install darktower[qh3]"


@attrs.frozen(eq=False)
class QuicCore:
    """What the driver needs from one QUIC library (see the module docstring)."""

    name: str
    connection_class: Callable[..., Any]
    h3_class: Callable[..., Any]
    quic_events: ModuleType
    h3_events: ModuleType
    # What send/reset/stop on a stream raise once it is finished, reset or discarded, and
    # what H3Connection's send_headers/send_data raise then.
    stream_errors: tuple[type[Exception], ...]
    h3_errors: tuple[type[Exception], ...]
    event_handlers: dict[type, Callable[[Connection, Any], None]]
    # None: _tls.quic_configuration builds aioquic's.
    configuration: Callable[..., Any] | None
    count_losses: Callable[[Any], None]
    read_stats: Callable[[Any, int, float], TransportStats]


def qh3_available() -> bool:
    return importlib.util.find_spec("qh3") is not None


@functools.cache
def load_core(name: str) -> QuicCore:
    """The core called ``name``; ValueError for an unknown one or qh3 when it is absent."""
    if name == "auto":
        name = "qh3" if qh3_available() else "aioquic"
    if name == "aioquic":
        return _aioquic_core()
    if name == "qh3":
        if not qh3_available():
            raise ValueError(INSTALL_HINT)
        return _qh3_core()
    raise ValueError(f"unknown QUIC core {name!r} (aioquic, qh3 or auto)")


def _aioquic_core() -> QuicCore:
    from aioquic.h3 import events as h3e
    from aioquic.h3.connection import H3Connection, ProtocolError
    from aioquic.quic import events as qe

    from ._quic import CreditedQuicConnection
    from ._routing import event_handlers
    from ._stats import count_losses, read_stats

    return QuicCore(
        name="aioquic",
        connection_class=CreditedQuicConnection,
        h3_class=H3Connection,
        quic_events=qe,
        h3_events=h3e,
        stream_errors=(ValueError, RuntimeError),
        h3_errors=(ProtocolError, ValueError),
        event_handlers=event_handlers(qe),
        configuration=None,
        count_losses=count_losses,
        read_stats=read_stats,
    )


def _qh3_core() -> QuicCore:
    from qh3.h3 import events as h3e
    from qh3.h3.connection import ProtocolError
    from qh3.quic import events as qe
    from qh3.quic.connection import QuicConnectionError

    from . import _quic_qh3
    from ._routing import event_handlers

    # qh3 logs every CONNECTION_CLOSE from a peer at WARNING: each client leaving would. Its
    # logger is aioquic's ("quic"): only qh3's own records below ERROR are dropped.
    logging.getLogger("quic").addFilter(_quiet_qh3)
    _quic_qh3.warm_up()
    return QuicCore(
        name="qh3",
        connection_class=_quic_qh3.Qh3Connection,
        h3_class=_quic_qh3.Qh3H3Connection,
        quic_events=qe,
        h3_events=h3e,
        stream_errors=(ValueError, RuntimeError, QuicConnectionError),
        h3_errors=(ProtocolError, ValueError, QuicConnectionError),
        event_handlers=event_handlers(qe),
        configuration=_quic_qh3.qh3_configuration,
        count_losses=_no_counters,
        read_stats=_quic_qh3.read_qh3_stats,
    )


def _no_counters(quic: Any) -> None:
    """qh3 counts losses natively (read by read_qh3_stats)."""


def _quiet_qh3(record: logging.LogRecord) -> bool:
    """The "quic" logger's filter once qh3 is loaded: qh3's records below ERROR go."""
    return record.levelno >= logging.ERROR or f"{os.sep}qh3{os.sep}" not in record.pathname
