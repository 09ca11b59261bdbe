"""QUIC connections to MHs shared by a processor's recordings (docs/architecture.md §10).

Each recording is a WebTransport session of its own (its hidden participant's token), but the
recordings on one MH share a QUIC connection, up to RECORDINGS_PER_CONNECTION sessions each:
the MH then sends 75 ms of every one of them in one burst of full packets
(``send_delay_ms``), and the processor wakes, reads and acknowledges once per burst instead of
once per recording. Live jobs (transcodes, mixes) keep a connection each.

:meth:`SharedConnections.run` owns the connections' tasks; a connection closes when its last
session has ended. A connection that fails ends the sessions on it, which end their jobs
(CONNECTION_LOST), as a connection of their own would.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

from darktower.logs import fields
from darktower.transport import Connection, TransportLimits, open_quic_connection

from ._limits import RECORDINGS_PER_CONNECTION

logger = logging.getLogger("darktower.media_processor")

Key = tuple[str, int, tuple[bytes, ...]]


@attrs.define(eq=False)
class _Shared:
    conn: Connection | None = None
    users: int = 0
    done: trio.Event = attrs.Factory(trio.Event)


class SharedConnections:
    """Connections by MH address and pinned certificate, each with its sessions counted."""

    def __init__(
        self, limits: TransportLimits, max_sessions: int = RECORDINGS_PER_CONNECTION
    ) -> None:
        self._limits = limits
        self._max = max_sessions
        self._open: dict[Key, list[_Shared]] = {}
        # One connection opened at a time per MH (a dead MH holds up only its own jobs).
        self._locks: dict[Key, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None

    def count(self) -> int:
        """Connections open now."""
        return sum(len(shared) for shared in self._open.values())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    @asynccontextmanager
    async def connection(self, url: str, pins: list[bytes] | None) -> AsyncIterator[Connection]:
        """A connection to the MH of ``url`` to open one session on, for the block. Raises
        ConnectFailed as ``open_quic_connection`` does."""
        assert self._nursery is not None, "SharedConnections.run is not running"
        split = urllib.parse.urlsplit(url)
        host, port = split.hostname or "", split.port or 443
        key = (host, port, tuple(pins or ()))
        lock = self._locks.setdefault(key, trio.Lock())
        async with lock:
            shared = next(
                (
                    s
                    for s in self._open.get(key, ())
                    if s.users < self._max and s.conn is not None and not s.conn.terminated.is_set()
                ),
                None,
            )
            if shared is None:
                shared = _Shared()
                await self._nursery.start(self._hold, host, port, pins, shared)
                self._open.setdefault(key, []).append(shared)
            shared.users += 1
        assert shared.conn is not None
        try:
            yield shared.conn
        finally:
            shared.users -= 1
            if shared.users == 0:
                held = self._open.get(key, [])
                if shared in held:
                    held.remove(shared)
                if not held:
                    self._open.pop(key, None)
                    if not lock.locked() and not lock.statistics().tasks_waiting:
                        self._locks.pop(key, None)
                shared.done.set()

    async def _hold(
        self,
        host: str,
        port: int,
        pins: list[bytes] | None,
        shared: _Shared,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Open the connection and keep it until its last session has ended. An error before
        it is open reaches the caller of ``connection``; after, it is logged: it must not end
        the other connections."""
        opened = False
        try:
            async with open_quic_connection(
                host, port, server_certificate_hashes=pins, limits=self._limits
            ) as conn:
                shared.conn = conn
                opened = True
                task_status.started()
                await shared.done.wait()
        except Exception as exc:
            if not opened:
                raise
            logger.warning(
                "shared media connection failed", extra=fields(mh=f"{host}:{port}", error=str(exc))
            )
