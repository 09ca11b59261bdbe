"""Staying registered with a peer: the MC with the GC's registry, the MH with its MC.

Register, then heartbeat at the interval the peer asks for; a failed call (the peer is
unreachable, or answers that it does not know us, e.g. after it restarted) means register
again, after a backoff that doubles up to a maximum and starts over once registered. Once the
peer has said its heartbeat interval, no wait between attempts is longer than that interval: a
peer that restarts hears from us within one interval, which its startup grace counts on
(docs/protocol.md §14). The heartbeat timing is docs/architecture.md §4 and
``darktower.protocol.heartbeats``.
"""

from __future__ import annotations

import logging
import math
from typing import NoReturn, Protocol

import trio

from darktower.logs import fields
from darktower.protocol.heartbeats import HEARTBEAT_MISSES

# Shortest staleness window of fresh(), seconds: readiness must not flap on scheduling jitter
# when a peer asks for very short intervals.
READY_FLOOR_S = 2.0


class Peer(Protocol):
    """The side we stay registered with (a gRPC stub in the services, a fake in tests).

    Each call gives up after its own deadline; a failure raises one of the errors the loop
    was told to retry on.
    """

    async def register(self) -> float:
        """Register; return the heartbeat interval the peer asks for, seconds (0: unsaid)."""
        ...

    async def heartbeat(self) -> None:
        """Send one heartbeat."""
        ...


class KeepRegistered:
    """The loop that keeps one registration alive, and what it knows of it.

    ``interval_s`` is the heartbeat interval in use (``default_interval_s`` until the peer
    says otherwise), ``last_ok`` the time of the last call the peer answered, ``registered``
    whether it ever accepted a registration.
    """

    def __init__(
        self,
        *,
        peer_name: str,
        address: str,
        default_interval_s: float,
        backoff_s: float,
        backoff_max_s: float,
        retry_on: tuple[type[Exception], ...],
        log: logging.Logger,
    ) -> None:
        self.peer_name = peer_name  # "GC", "MC": in log lines, its address under that key
        self.address = address
        self.default_interval_s = default_interval_s
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.retry_on = retry_on
        self.log = log
        self.interval_s = default_interval_s
        self.last_ok = -math.inf
        self.registered = False
        self._beat_now = trio.Event()

    def fresh(self, now: float) -> bool:
        """The peer answered within the last HEARTBEAT_MISSES intervals (at least
        READY_FLOOR_S): what a service's ``/readyz`` asks of its registration."""
        return now - self.last_ok <= max(HEARTBEAT_MISSES * self.interval_s, READY_FLOOR_S)

    def beat_now(self) -> None:
        """Send the next heartbeat at once instead of at the end of the interval."""
        self._beat_now.set()

    async def run(self, peer: Peer) -> NoReturn:
        """Register with ``peer`` and keep the registration alive until cancelled.

        Never raises for the errors in ``retry_on`` (they are logged and retried with
        backoff); any other error propagates. Owns no resource: the caller owns ``peer``'s
        channel.
        """
        backoff = self.backoff_s
        where = {self.peer_name.lower(): self.address}
        while True:
            try:
                interval_s = await peer.register()
                self.interval_s = interval_s or self.default_interval_s
                self._answered()
                self.registered = True
                backoff = self.backoff_s
                self.log.info(f"registered with the {self.peer_name}", extra=fields(**where))
                while True:
                    with trio.move_on_after(self.interval_s):
                        await self._beat_now.wait()
                    self._beat_now = trio.Event()
                    await peer.heartbeat()
                    self._answered()
            except self.retry_on as exc:
                delay = backoff
                if self.registered:  # within the interval the peer asked for (its grace)
                    delay = min(backoff, max(self.interval_s, self.backoff_s))
                self.log.warning(
                    f"registration with the {self.peer_name} failed; retrying",
                    extra=fields(**where, error=str(exc), retry_s=delay),
                )
                await trio.sleep(delay)
                backoff = min(backoff * 2, self.backoff_max_s)

    def _answered(self) -> None:
        self.last_ok = trio.current_time()
