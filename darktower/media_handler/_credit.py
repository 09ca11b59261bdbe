"""What a subscriber's flow-control credit lets its subscription write (sans-IO, time passed in).

How a slow subscriber is isolated: docs/architecture.md §4.3.

A subscription writes to its uni stream only up to the offset the subscriber's QUIC stack lets
it send (``send_credit``, raised only as the subscriber's application reads). Frames beyond it
stay in the subscription's bounded queue, where the drop policy and the age bound apply to
them, instead of in the transport's send buffer, where nothing could drop them and aioquic
would carry them through every flush. A subscription that waits for credit sleeps on a timer
(CREDIT_POLL_MAX_S) rather than waking at every frame routed to it, and a stream whose credit
does not move for long while frames wait is given up (CREDIT_STALL_S, _limits.py).
"""

from __future__ import annotations

import math

from ._limits import CREDIT_POLL_MAX_S, CREDIT_STALL_MAX_S, CREDIT_STALL_S

# The first look at the credit after a subscription blocks; each later look doubles the
# wait, up to CREDIT_POLL_MAX_S.
CREDIT_POLL_MIN_S = CREDIT_POLL_MAX_S / 8
# A subscriber that reads shows it by raising its credit once per so many bytes read (half
# its window for ours): it is stalled only after this many of its last intervals between two
# raises (at least CREDIT_STALL_S, at most CREDIT_STALL_MAX_S) without one.
STALL_INTERVALS = 3


class SendWindow:
    """The credit of a subscription's uni stream as the subscription last saw it.

    ``open(credit, now)`` for each new stream; ``room(credit, written, now)`` before each
    write: bytes that may go now (whole frames that fit; a frame larger than half the stream's
    first credit goes alone once that much is free, so that no frame waits for ever and the
    transport holds at most part of such a frame beyond the credit); ``block(now)`` when
    frames wait and do not fit returns when to look again, ``wrote()`` after frames went;
    ``stalled(now)`` says frames waited without the subscriber reading for longer than it
    took between its last two raises, three times over (CREDIT_STALL_S to
    CREDIT_STALL_MAX_S; half the latter before its first raise). A stream whose credit was 0 at its open (a peer that grants stream
    credit only later, or a transport without flow control) is not gated: the transport's
    own backpressure applies, as for any stream.
    """

    __slots__ = (
        "_poll",
        "blocked_since",
        "credit",
        "gated",
        "interval",
        "raised_at",
        "raises",
        "straddle",
    )

    def __init__(self) -> None:
        self.gated = False
        self.credit = 0
        self.straddle = 0  # room from which one frame larger than the room may go
        self.blocked_since = math.inf
        self.raises = 0  # raises of the credit seen (evidence of reading)
        self.raised_at = 0.0  # the last raise, or the stream's open
        self.interval = -1.0  # between the last two raises, kept across streams (-1: none)
        self._poll = CREDIT_POLL_MIN_S

    def open(self, credit: int, now: float) -> None:
        """A new stream whose credit is ``credit`` at ``now``."""
        self.gated = credit > 0
        self.credit = credit
        self.straddle = credit // 2
        self.blocked_since = math.inf
        self.raised_at = now
        self._poll = CREDIT_POLL_MIN_S

    def room(self, credit: int, written: int, now: float) -> int:
        """Bytes the subscription may write now, ``written`` bytes into the stream whose credit
        is ``credit``; a large number when the stream is not gated."""
        if not self.gated or credit < self.credit:
            return 1 << 62  # (a credit that fell: the stream is gone, a write says why)
        if credit > self.credit:  # the subscriber read: the stall clock starts afresh
            self.credit = credit
            self.raises += 1
            self.interval = now - self.raised_at
            self.raised_at = now
            self.blocked_since = math.inf
        return credit - written

    def wrote(self) -> None:
        """Frames went: the next wait for credit looks soon again."""
        self.blocked_since = math.inf
        self._poll = CREDIT_POLL_MIN_S

    def block(self, now: float) -> float:
        """Frames wait and there is no room: when to look at the credit again."""
        if self.blocked_since == math.inf:
            self.blocked_since = now
        poll = self._poll
        self._poll = min(poll * 2, CREDIT_POLL_MAX_S)
        return min(now + poll, self.blocked_since + self.stall_after())

    def stall_after(self) -> float:
        """How long frames may wait for a raise before the stream counts as stalled: half
        CREDIT_STALL_MAX_S until the subscriber's first raise shows its pace."""
        if self.interval < 0:
            return CREDIT_STALL_MAX_S / 2
        return min(max(CREDIT_STALL_S, STALL_INTERVALS * self.interval), CREDIT_STALL_MAX_S)

    def stalled(self, now: float) -> bool:
        """Frames have waited for credit :meth:`stall_after` without the subscriber reading."""
        return now >= self.blocked_since + self.stall_after()  # as block() computes it
