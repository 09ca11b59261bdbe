"""What the participants of one run share: settings, target, counters, the phase events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import attrs
import trio

from darktower.client import GlobalControllerClient
from darktower.errors import DarkTowerError, RateLimited
from darktower.transport import ConnectFailed, SessionRefused

from ._limits import MAX_RETRIES, MAX_RETRY_WAIT_S, RETRY_DEFAULT_S
from ._options import LoadTestSettings
from ._payload import VideoPlan
from ._stats import PublishedStream, Stats
from ._target import Target

T = TypeVar("T")


@attrs.frozen
class MeetingPlan:
    """A meeting the run created: participants 0 .. publishers-1 publish; participant 0 joins
    with the creator's host token, the others as guests through the REST API."""

    index: int
    meeting_id: str
    host_token: str
    signal_url: str
    publishers: int


@attrs.define(eq=False)
class RunContext:
    settings: LoadTestSettings
    target: Target
    stats: Stats
    guest_gc: GlobalControllerClient  # without an access token: joins as guests
    video: VideoPlan
    join_slots: trio.CapacityLimiter
    # Phases, set in this order by the run (all at once when it stops early).
    go: trio.Event = attrs.field(factory=trio.Event)  # everyone is in: publishers start
    stop_sending: trio.Event = attrs.field(factory=trio.Event)  # duration over: they stop
    leave: trio.Event = attrs.field(factory=trio.Event)  # in-flight frames drained: leave
    all_settled: trio.Event = attrs.field(factory=trio.Event)  # every participant ready or failed
    settled: int = 0
    all_gone: trio.Event = attrs.field(factory=trio.Event)  # every participant's task ended
    gone: int = 0
    # Every stream this run publishes, by stream id: subscribers count only these.
    streams: dict[str, PublishedStream] = attrs.field(factory=dict)
    # Per meeting: publishers that failed before publishing, and who to tell about one.
    lost_publishers: dict[int, int] = attrs.field(factory=dict)
    on_publisher_lost: dict[int, list[Callable[[], None]]] = attrs.field(factory=dict)

    @property
    def streams_per_publisher(self) -> int:
        return (1 if self.settings.video_kbps > 0 else 0) + (1 if self.settings.audio else 0)

    @property
    def pins(self) -> list[bytes] | None:
        return list(self.target.certificate_hashes) or None

    def settle(self) -> None:
        """One participant is ready or has failed; the last one releases the run."""
        self.settled += 1
        if self.settled >= self.stats.participants_planned:
            self.all_settled.set()

    def participant_gone(self) -> None:
        """One participant's task ended (left or failed); after the last, nothing can happen."""
        self.gone += 1
        if self.gone >= self.stats.participants_planned:
            self.all_gone.set()

    def publisher_lost(self, meeting: int) -> None:
        """A publisher of ``meeting`` failed before publishing: the others stop waiting for it."""
        self.lost_publishers[meeting] = self.lost_publishers.get(meeting, 0) + 1
        for check in self.on_publisher_lost.get(meeting, []):
            check()

    async def rest(self, call: Callable[[], Awaitable[T]]) -> T:
        """A GC call (concurrent ones share the HTTP/3 connection), retried after
        RATE_LIMITED."""
        return await self.retrying(call)

    async def retrying(
        self, call: Callable[[], Awaitable[T]], *, lock: trio.Lock | None = None
    ) -> T:
        """``await call()``, again after RATE_LIMITED (waiting what the server asks, bounded),
        at most MAX_RETRIES times; each attempt holds ``lock`` if given (not the waits).
        Raises the last error."""
        for attempt in range(MAX_RETRIES + 1):
            try:
                if lock is None:
                    return await call()
                async with lock:
                    return await call()
            except RateLimited as exc:
                if attempt == MAX_RETRIES:
                    raise
                self.stats.retries += 1
                await trio.sleep(min(MAX_RETRY_WAIT_S, exc.retry_after_s or RETRY_DEFAULT_S))
        raise AssertionError("unreachable")


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups, or ``exc`` itself."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


def error_kind(exc: BaseException) -> str:
    """A short stable name for an error: the wire code name, else the exception type."""
    if isinstance(exc, (ConnectFailed, SessionRefused)):
        return "CONNECT_FAILED" if isinstance(exc, ConnectFailed) else f"REFUSED_{exc.status}"
    if isinstance(exc, DarkTowerError):
        return exc.code.name
    if isinstance(exc, trio.TooSlowError):
        return "TIMEOUT"
    return type(exc).__name__
