"""Data messages through the MH (docs/protocol.md §18.4): lossy application data that
participants send as WebTransport datagrams on their media sessions.

One task per media session (``"data"``, a stream task of the participant's scope, so it ends
with the session) takes the session's datagrams off the transport's bounded queue (64, the
oldest dropped) and relays each at once, never waiting on a recipient: a data message to
everyone goes to every other participant of the sender's room on this MH that is connected,
one to a participant to that participant only, each copy with bytes 4-19 replaced by the
sender's id. A media processor's job (registered removed, docs/architecture.md §10) and a
member the MC removed receive none and send none.

What is dropped, each drop counted in ``darktower_mh_data_dropped_total{reason}``:

* a malformed datagram: ``short``, ``version``, ``kind``, ``too_large`` (the codec's reasons);
* beyond the sender's token buckets (_limits.py): ``rate``;
* beyond the room's bucket of copies (``MediaRoom.data_copies``, MAX_ROOM_DATA_COPIES_PER_S):
  ``room_rate``, once per datagram (none of its recipients gets it);
* a recipient that is not a participant of the room: ``unknown_recipient``; one that is not
  connected, or whose connection cannot take the datagram: ``undeliverable``;
* a copy beyond the recipient's outgoing byte budget, at the lowest priority so data never
  crowds out media (_budget.py): ``budget``.

A datagram whose first byte is 0 is padding (docs/protocol.md §17.2): ignored, not counted.
Nothing here raises out of the session: an unexpected error with one datagram is logged,
counted as ``error``, and the next is read.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

import trio

from darktower.frames import DataMessageError, decode_data, encode_data, is_padding
from darktower.logs import fields
from darktower.model import ParticipantId
from darktower.protocol.ratelimit import TokenBucket
from darktower.transport import DatagramTooLarge, WebTransportSession

from ._budget import Priority
from ._limits import DATA_BURST_S, MAX_DATA_BYTES_PER_S, MAX_DATA_MESSAGES_PER_S
from ._metrics import MediaMetrics
from ._room import MediaMember

logger = logging.getLogger("darktower.media_handler")

DATA_DROP_REASONS = (
    "short",
    "version",
    "kind",
    "too_large",
    "rate",
    "room_rate",
    "unknown_recipient",
    "undeliverable",
    "budget",
    "error",
)


class SenderLimit:
    """The token buckets of one sender (sans-IO): MAX_DATA_MESSAGES_PER_S datagrams and
    MAX_DATA_BYTES_PER_S bytes a second, each holding DATA_BURST_S of its rate, full at start."""

    __slots__ = ("_bytes", "_count")

    def __init__(self) -> None:
        self._count = TokenBucket(MAX_DATA_MESSAGES_PER_S, MAX_DATA_MESSAGES_PER_S * DATA_BURST_S)
        self._bytes = TokenBucket(MAX_DATA_BYTES_PER_S, MAX_DATA_BYTES_PER_S * DATA_BURST_S)

    def admit(self, size: int, now: float) -> bool:
        """Take one datagram of ``size`` bytes from both buckets, or nothing from either."""
        # As TokenBucket.try_acquire: a token due at exactly ``now`` may be short by a rounding.
        if self._count.tokens(now) + 1e-9 < 1 or self._bytes.tokens(now) + 1e-9 < size:
            return False
        self._count.try_acquire(now)
        self._bytes.try_acquire(now, size)
        return True


class DataRelay:
    """The data message relay of one MH; :meth:`serve` is the task of one media session."""

    def __init__(self, metrics: MediaMetrics) -> None:
        self.metrics = metrics
        for reason in DATA_DROP_REASONS:
            metrics.data_dropped.inc(0, reason)
        self.handled = 0  # datagrams taken off the sessions, padding included
        # The senders' buckets' time (a test holds it still); budgets read the trio clock.
        self.clock: Callable[[], float] = trio.current_time
        self._handled = trio.Event()

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate`` holds, checked after each datagram handled (for tests and
        tools: nothing here polls)."""
        while not predicate():
            await self._handled.wait()

    async def serve(self, member: MediaMember, session: WebTransportSession) -> None:
        """Relay the data messages ``member`` sends on ``session`` until the session ends
        (returns) or the participant's scope is cancelled. Raises nothing else."""
        try:
            sender = uuid.UUID(member.id).bytes
        except ValueError:  # the MC's participant ids are UUIDs; anything else cannot send
            logger.info(
                "data messages off: participant id is not a UUID",
                extra=fields(participant=member.id, meeting=member.room.id),
            )
            return
        limit = SenderLimit()
        while True:
            try:
                datagram = await session.receive_datagram()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            try:
                self.relay(member, sender, limit, datagram, trio.current_time())
            except Exception:
                self._drop("error")
                logger.exception("data message dropped", extra=fields(participant=member.id))
            self.handled += 1
            self._handled.set()
            self._handled = trio.Event()

    def relay(
        self, member: MediaMember, sender: bytes, limit: SenderLimit, datagram: bytes, now: float
    ) -> None:
        """Relay one datagram ``member`` sent (its id's bytes: ``sender``) at ``now`` (the
        trio clock, for the recipients' budgets). Never blocks."""
        if is_padding(datagram) or member.removed:
            return
        self.metrics.data_received.inc()
        try:
            message = decode_data(datagram)
        except DataMessageError as exc:
            self._drop(exc.reason)
            return
        if not limit.admit(len(datagram), self.clock()):
            self._drop("rate")
            return
        room = member.room
        if message.private:
            target = room.members.get(ParticipantId(message.participant_id))
            if target is None or target.removed:
                self._drop("unknown_recipient")
                return
            targets = [target]
        else:
            targets = [
                m
                for m in room.members.values()
                if m is not member and not m.removed and m.scope is not None
            ]
        if not targets:
            return
        # A room's copies, not only each sender's datagrams, are bounded (_limits.py).
        if not room.data_copies.try_acquire(self.clock(), len(targets)):
            self._drop("room_rate")
            return
        out = encode_data(message.payload, sender, private=message.private)
        for target in targets:
            self._deliver(target, out, now)

    def _deliver(self, target: MediaMember, out: bytes, now: float) -> None:
        session = target.session
        if session is None or target.scope is None:
            self._drop("undeliverable")
            return
        if not target.budget_out.admit(Priority.DISCARDABLE, len(out), now):
            self._drop("budget")
            return
        try:
            session.send_datagram(out)
        except (DatagramTooLarge, trio.BrokenResourceError, trio.ClosedResourceError):
            self._drop("undeliverable")
            return
        self.metrics.data_sent.inc()

    def _drop(self, reason: str) -> None:
        self.metrics.data_dropped.inc(1, reason)
