"""What one subscriber connection can take: a delay- and loss-based bandwidth estimate.

Sans-IO: no trio, time is a parameter (docs/architecture.md §4.3 says who feeds it). QUIC's
congestion window alone overestimates a path that is not saturated (it grows while the sender
is application-limited), so the estimate follows the path's signals, in the manner of GCC:

* **Congestion** is queuing delay (the recent RTT above the smallest of the last
  ``BASE_WINDOW_S``, or the bytes in flight beyond a recent RTT's worth and one packet at
  the delivered rate, whichever is more, by more than ``DELAY_THRESHOLD_S``, for ``PERSIST`` samples in a row: a
  key frame's burst passes in fewer; the bytes in flight, noisier, are not read during a
  probe), a backlog at this end that keeps more than
  ``BACKLOG_S`` of the estimate and does not shrink, or heavy loss (above ``LOSS_THRESHOLD``
  of the packets of the last ``LOSS_WINDOW_S``, beyond chance; random loss below it, as on a
  lossy radio link, is not congestion). On a delay the estimate becomes at most ``DECREASE``
  times the rate the path delivered (acknowledged) since the delay rose, on a backlog over
  the last ``DELIVERED_WINDOW_S``; on heavy loss alone it shrinks by half the loss, at most every
  ``LOSS_DECREASE_S`` (as GCC's loss controller).
* **Without congestion** it grows by ``GROWTH_PER_S`` (multiplicative), never above
  ``APP_LIMITED_RATIO`` times the rate actually sent: a path that is not filled proves nothing
  beyond what it carries.
* **Probing** proves more: when the caller :meth:`wants <BandwidthEstimator.plan>` more than
  the estimate, nothing was congested for the probe backoff and the queuing delay stayed at
  most ``PROBE_QUIET_DELAY_S`` for ``PROBE_QUIET_S`` since the caller last changed what it
  sends (:meth:`settle <BandwidthEstimator.settle>`: a path with a standing queue is full,
  padding on it only lengthens the queue; and a higher layer, with its key frame, shows first
  whether it fits), the caller sends padding at the missing rate (ramped up over
  ``PROBE_RAMP_S``) for up to ``PROBE_S``; the first sign of queuing delay ends the probe (a
  failed probe doubles the backoff up to ``MAX_BACKOFF_S`` and lowers nothing while its
  queue drains); a clean probe, one whose padding went out and was not lost without the
  queuing delay growing, makes its rate the estimate. A probe during which this end stalled
  is void.

The estimate stays between ``MIN_BPS`` and the connection's ``max_bps`` (its byte budget),
and starts at the latter: until the path shows congestion, nothing limits what is sent but
the budget (a subscriber starts at the layer it asks for and comes down within a fraction of
a second if its path cannot take it).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final

import attrs

# The estimate never goes below this (audio and the lowest video layer still flow), bits/s.
MIN_BPS: Final = 50_000
# Queuing delay (the recent RTT above the base) that means congestion, seconds, once it held
# for PERSIST samples in a row (a probe: one).
DELAY_THRESHOLD_S: Final = 0.04
PERSIST: Final = 3
# The base RTT is the smallest sample of this long (a path that changes is learnt in as long).
BASE_WINDOW_S: Final = 10.0
# A backlog at this end (queued and unsent bytes) above this long at the estimate, not
# shrinking, for PERSIST samples in a row, is congestion too (a peer or a window that holds
# back).
BACKLOG_S: Final = 0.25
# Loss above this fraction of the packets sent over LOSS_WINDOW_S is congestion, counted only
# once LOSS_MIN_PACKETS were sent in that window.
LOSS_THRESHOLD: Final = 0.1
LOSS_WINDOW_S: Final = 2.0
LOSS_MIN_PACKETS: Final = 40
LOSS_DECREASE_S: Final = 0.5
# How sure "above LOSS_THRESHOLD" must be (standard deviations of the loss over the window).
LOSS_Z: Final = 1.64
# On congestion: the estimate becomes at most this times the rate delivered over the window.
DECREASE: Final = 0.85
DELIVERED_WINDOW_S: Final = 0.5
# On a congestion by delay: the rate delivered since the delay rose, once it is this long.
CONGESTED_RATE_S: Final = 0.15
# Without congestion: multiplicative growth per second, up to this times the rate sent (over
# SENT_WINDOW_S).
GROWTH_PER_S: Final = 1.08
APP_LIMITED_RATIO: Final = 1.5
SENT_WINDOW_S: Final = 1.0
# Probing: after this long without congestion (doubled after each failed probe, up to
# MAX_BACKOFF_S; a clean probe restarts it), at most PROBE_S, aiming this much above what is
# wanted. A probe succeeds if PROBE_DELIVERED of the padding it asked for was sent beyond the
# media and no more than PROBE_MAX_LOSS of the packets sent meanwhile were lost.
PROBE_BACKOFF_S: Final = 1.5
MAX_BACKOFF_S: Final = 3.0
PROBE_S: Final = 0.6
# The padding ramps up over this long (the overshoot on a capped path stays small), paid
# from one tick (PROBE_TICK_S) before the probe starts.
PROBE_RAMP_S: Final = 0.4
PROBE_TICK_S: Final = 0.1
# After a failed probe: congestion lowers nothing for this long, or until the queue it made
# drained (the probe's padding made it, not the media).
DRAIN_S: Final = 1.0
PROBE_HEADROOM: Final = 1.1
# A probe aims at most this times the estimate: a layer that claims an absurd max_bitrate (a
# hostile publisher's) costs its subscribers a probe one step up, not a burst at the budget.
PROBE_MAX_GAIN: Final = 2.5
PROBE_DELIVERED: Final = 0.8
PROBE_MAX_LOSS: Final = 0.2
# ... and if the queuing delay grew by no more than this meanwhile, seconds.
PROBE_DELAY_S: Final = 0.025
# A probe starts only once the queuing delay stayed at most this for this long, seconds,
# and the caller changed nothing it sends meanwhile (settle()).
PROBE_QUIET_DELAY_S: Final = 0.025
PROBE_QUIET_S: Final = 0.5
# The media's rate a probe is judged against is the smaller of what the caller says it
# sends and what was sent over SENT_WINDOW_S, or since the last probe ended if that is
# shorter (its padding is no media), but at least this long.
MEDIA_WINDOW_MIN_S: Final = 0.3
# A sample taken this soon after this end stalled has no RTT worth reading, seconds.
STALL_SAMPLE_S: Final = 0.15
# The smallest full QUIC packet (RFC 9000 §14): a connection's own may be larger, bytes.
MIN_PACKET_BYTES: Final = 1200
# Samples kept (time-bounded; this bounds them in count too, at ticks of ~0.1 s).
HISTORY: Final = 64
RTT_SAMPLES: Final = 256


@attrs.frozen(slots=True)
class LinkSample:
    """One reading of a connection: cumulative QUIC counters and what waits at this end.

    ``rtt_s`` is the smallest of QUIC's recent RTT samples (0: none yet: a stall of this end
    or a burst inflates some samples, a queue on the path all of them); ``stalled_at`` is
    when this end's event loop last stalled (its acknowledgements waited: the RTT samples of
    the next tick and the delivered rate of the next DELIVERED_WINDOW_S mean nothing); the
    byte counts are whole UDP payloads of in-flight packets; ``backlog`` is the bytes queued
    for the peer and not sent yet, ``in_flight`` the bytes sent and not yet acknowledged
    (right after the last ACK: a queue on the path holds them all along, the frame sent since
    is no queue);
    ``packet_bytes`` about the size of one full packet of the connection.
    """

    now: float
    rtt_s: float = 0.0
    bytes_sent: int = 0
    bytes_acked: int = 0
    packets_sent: int = 0
    packets_lost: int = 0
    backlog: int = 0
    in_flight: int = 0
    stalled_at: float = -1e9
    packet_bytes: int = MIN_PACKET_BYTES


@attrs.define(slots=True)
class _Probe:
    target: float  # bits/s the connection carries during the probe
    estimate: float  # the estimate when it started
    start: float
    until: float
    acked_at_start: int
    bytes_sent_at_start: int
    packets_at_start: tuple[int, int]  # (sent, lost)
    paid_at: float  # padding is owed from here on
    delay_at_start: float  # the queuing delay when it started (a capped path has some)
    # The media's rate it is sized and judged against: the smaller of what was sent before it
    # and what the caller said it sends (a key frame's burst inflates the former, an encoder
    # below its layer's rate the latter), bits/s.
    media_bps: float
    delay_max: float = 0.0  # the most queuing delay seen since
    padding: int = 0  # bytes of padding it asked for


class BandwidthEstimator:
    """The estimate of one connection (bits/s): :meth:`update` with each :class:`LinkSample`
    (every ~0.1 s), then :meth:`plan` with what the caller would like to send, which returns
    the bytes of padding to send now (0 but while probing)."""

    def __init__(self, *, now: float, max_bps: float, initial_bps: float | None = None) -> None:
        self.max_bps = float(max_bps)
        # Before the path shows congestion nothing limits it but the budget (by default).
        self.estimate = _clamp(float(initial_bps or max_bps), self.max_bps)
        self.congested = False  # the last update found congestion
        # What the last update found: "delay" (the RTT's, or the bytes in flight's),
        # "backlog" or "loss" ("": none), for a trace of the estimate to show.
        self.cause = ""
        self.loss = 0.0  # the packet loss of the last LOSS_WINDOW_S
        self.queuing_delay_s = 0.0
        self.last_congested_at = -1e9
        self.probe_succeeded_at = -1e9  # when a probe last made its rate the estimate
        self.backoff_s = PROBE_BACKOFF_S
        self._next_probe_at = now + PROBE_BACKOFF_S
        self._probe: _Probe | None = None
        self._probe_ended_at = -math.inf
        # Since when the queuing delay stayed at most PROBE_QUIET_DELAY_S and the caller did
        # not change what it sends (see settle()).
        self._quiet_since = now
        self._history: deque[LinkSample] = deque(maxlen=HISTORY)
        # (time, rtt) increasing in rtt: the front is the base (a monotonic queue).
        self._rtts: deque[tuple[float, float]] = deque(maxlen=RTT_SAMPLES)
        self._delay_high = 0  # samples in a row above the delay threshold
        self._backlog_high = 0
        self._last_backlog = 0
        self._last: LinkSample | None = None
        self._loss_decreased_at = -1e9
        self._loss_packets = 0  # packets sent over the loss window
        # A failed probe's queue drains until then: congestion meanwhile lowers nothing.
        self._draining_until = -1e9
        # When the delay rose above the threshold, and the bytes acknowledged then (None:
        # it is below).
        self._high_since: tuple[float, int] | None = None

    @property
    def probing(self) -> bool:
        return self._probe is not None

    def delivered_bps(self, now: float) -> float | None:
        """Acknowledged bits/s over the last DELIVERED_WINDOW_S (None: too short a history).
        At the start of a congestion it may still count a time before: a delay that keeps
        growing decreases again (see _decrease)."""
        return self._rate(now, DELIVERED_WINDOW_S, acked=True)

    def sent_bps(self, now: float) -> float | None:
        return self._rate(now, SENT_WINDOW_S, acked=False)

    def update(self, sample: LinkSample) -> None:
        """Take one reading; move the estimate (see the module doc)."""
        now = sample.now
        last = self._last
        self._last = sample
        self._history.append(sample)
        while len(self._history) > 2 and self._history[1].now <= now - max(
            LOSS_WINDOW_S, SENT_WINDOW_S, DELIVERED_WINDOW_S
        ):
            self._history.popleft()
        self.loss = self._loss(sample)
        if now - sample.stalled_at < STALL_SAMPLE_S:  # RTT samples waited for this end
            backlog_high = False
        else:
            self._delay(sample)
            backlog_high = self._backlog(sample)
        heavy_loss = self._heavy_loss()
        probe = self._probe
        if probe is not None and sample.stalled_at > probe.start:
            # This end stalled during the probe: what it sent and saw proves nothing either
            # way. Void it; another may start at the next tick.
            self._probe = probe = None
            self._probe_ended_at = now
        # A probe stops at the first sample of queuing delay; otherwise it takes PERSIST.
        if probe is not None:
            probe.delay_max = max(probe.delay_max, self.queuing_delay_s)
            queuing = delayed = self._delay_high >= 1
        else:  # a delay twice the threshold is no key frame's burst: it needs one sample less
            high = self.queuing_delay_s > 2 * DELAY_THRESHOLD_S
            delayed = self._delay_high >= PERSIST - high
            queuing = delayed or backlog_high
        # (A probe's padding takes the window that stream data waits for: its backlog is
        # its own doing, judged by what it delivered.)
        congested = self.congested = queuing or heavy_loss
        self.cause = ("delay" if delayed else "backlog") if queuing else "loss" if congested else ""
        dt = 0.0 if last is None else max(0.0, now - last.now)
        if congested:
            self.last_congested_at = now
            if probe is not None:  # its own padding made the queue: nothing to lower
                self._probe = None
                self._probe_ended_at = now
                self.backoff_s = min(self.backoff_s * 2, MAX_BACKOFF_S)
                self._draining_until = now + DRAIN_S
                self.estimate = min(self.estimate, probe.estimate)
            elif now < self._draining_until and not heavy_loss:
                pass
            elif queuing and now - sample.stalled_at >= DELIVERED_WINDOW_S:
                self._decrease(sample)
            elif now - self._loss_decreased_at >= LOSS_DECREASE_S:
                self._loss_decreased_at = now
                self.estimate = _clamp(self.estimate * (1 - self.loss / 2), self.max_bps)
            self._next_probe_at = now + self.backoff_s
            return
        self._draining_until = -1e9  # the congestion is over
        if probe is not None and now >= probe.until:
            self._end_probe(probe, now)
        sent = self.sent_bps(now)
        if dt and sent is not None:
            ceiling = max(self.estimate, APP_LIMITED_RATIO * sent)
            grown = self.estimate * GROWTH_PER_S**dt
            self.estimate = _clamp(min(grown, ceiling), self.max_bps)

    def _decrease(self, sample: LinkSample) -> None:
        """To DECREASE x the rate the path delivered since the delay rose (once that is
        CONGESTED_RATE_S long): its queue kept it busy all along, so that is what it carries.
        The rate over a window before would count a time it carried more (before a cap) or
        less (the sender had less to send: a key frame's burst then looks like a collapse)."""
        anchor = self._high_since
        if anchor is None:
            delivered = self.delivered_bps(sample.now)  # a backlog, no delay
        else:
            span = sample.now - anchor[0]
            if span < CONGESTED_RATE_S:
                return
            delivered = (sample.bytes_acked - anchor[1]) * 8 / span
        if delivered is not None:
            self.estimate = _clamp(min(self.estimate, DECREASE * delivered), self.max_bps)

    def settle(self, now: float) -> None:
        """The caller changes what it sends (a layer switch): no probe starts before the
        path showed for PROBE_QUIET_S how it takes the change."""
        self._quiet_since = max(self._quiet_since, now)

    def plan(
        self,
        wanted_bps: float,
        now: float,
        sending_bps: float | None = None,
        max_padding: int = 1 << 62,
    ) -> int:
        """What the caller would like to send now (bits/s, all of it) and what it sends now
        (None: the rate sent of late); returns the bytes of padding to send now, at most
        ``max_padding`` (what the caller can send at once): 0 unless a probe runs (one may
        start here)."""
        probe = self._probe
        if probe is None:
            if (
                wanted_bps * PROBE_HEADROOM > self.estimate
                and self.estimate < self.max_bps
                and now >= self._next_probe_at
                and now - self.last_congested_at >= self.backoff_s
                and now - self._quiet_since >= PROBE_QUIET_S
                and not self._backlog_high
                and self._last is not None
            ):
                probe = self._start_probe(wanted_bps, now, sending_bps, max_padding)
            else:
                return 0
        ramp = min(1.0, (now - probe.start + PROBE_TICK_S) / PROBE_RAMP_S)
        # Sized against the media's rate it is judged against (_end_probe).
        gap = max(0.0, probe.target - probe.media_bps)
        owed = min(int(ramp * gap * max(0.0, now - probe.paid_at) / 8), max_padding)
        probe.paid_at = now
        probe.padding += owed
        return owed

    def _start_probe(
        self, wanted_bps: float, now: float, sending_bps: float | None, max_padding: int
    ) -> _Probe:
        target = min(wanted_bps * PROBE_HEADROOM, self.max_bps, self.estimate * PROBE_MAX_GAIN)
        # The media's rate: what was sent since the last probe's padding, if that is long
        # enough to measure (a probe right after a probe would count its padding as media).
        window = min(SENT_WINDOW_S, max(MEDIA_WINDOW_MIN_S, now - self._probe_ended_at))
        sent = self._rate(now, window, acked=False)
        if sent is None:
            sent = self.sent_bps(now)
        sent = sent or 0.0
        media = sent if sending_bps is None else min(sent, sending_bps)
        # No higher than the caller can pad to (it sends at most max_padding a tick).
        target = min(target, media + max_padding * 8 / PROBE_TICK_S)
        assert self._last is not None
        # The first tick's padding covers one tick ahead: from now on, it is paid as it goes.
        probe = _Probe(
            target,
            self.estimate,
            now,
            now + PROBE_S,
            self._last.bytes_acked,
            self._last.bytes_sent,
            (self._last.packets_sent, self._last.packets_lost),
            now - PROBE_TICK_S,
            self.queuing_delay_s,
            media,
        )
        self._probe = probe
        return probe

    def _end_probe(self, probe: _Probe, now: float) -> None:
        self._probe = None
        self._probe_ended_at = now
        last = self._last
        assert last is not None
        span = now - probe.start
        delivered = (last.bytes_acked - probe.acked_at_start) * 8 / span if span > 0 else 0.0
        clean = probe.delay_max - probe.delay_at_start <= PROBE_DELAY_S
        # Its padding got out: what was sent beyond the media at its rate (the ramp asks for
        # less than the target at first). And the path carried it: the packets sent meanwhile
        # were not lost (acknowledgements, an RTT late, would judge a long path short).
        beyond = (last.bytes_sent - probe.bytes_sent_at_start) - probe.media_bps * span / 8
        sent = last.packets_sent - probe.packets_at_start[0]
        lost = last.packets_lost - probe.packets_at_start[1]
        carried = (
            beyond >= PROBE_DELIVERED * probe.padding and lost / max(sent, 1) <= PROBE_MAX_LOSS
        )
        if clean and carried:
            self.estimate = _clamp(max(self.estimate, probe.target), self.max_bps)
            self.probe_succeeded_at = now
            self.backoff_s = PROBE_BACKOFF_S
            self._next_probe_at = now  # the next step: once the path settled (PROBE_QUIET_S)
            return
        else:  # the padding did not get out, or the queue grew: as good as failed
            self.estimate = _clamp(max(self.estimate, min(delivered, probe.target)), self.max_bps)
            self.backoff_s = min(self.backoff_s * 2, MAX_BACKOFF_S)
        self._next_probe_at = now + self.backoff_s

    def _delay(self, sample: LinkSample) -> None:
        rtt = sample.rtt_s
        if rtt <= 0:
            self._delay_high = 0
            self.queuing_delay_s = 0.0
            return
        now = sample.now
        rtts = self._rtts
        while rtts and rtts[-1][1] >= rtt:
            rtts.pop()
        rtts.append((now, rtt))
        while rtts[0][0] < now - BASE_WINDOW_S:
            rtts.popleft()
        base = rtts[0][1]
        self.queuing_delay_s = rtt - base
        if self.queuing_delay_s > PROBE_QUIET_DELAY_S:
            self._quiet_since = now
        ahead = 0.0
        delivered = self.delivered_bps(now)
        if delivered and sample.in_flight and self._probe is None:
            # What is in flight beyond a recent RTT's worth waits in a queue on the path that
            # the RTT samples do not show yet (they come back through it); noisy (a burst
            # just sent), so it only helps see a congestion start. One packet is no queue:
            # at a low rate the one just sent alone would take longer than an RTT.
            queued = max(0, sample.in_flight - sample.packet_bytes)
            ahead = queued * 8 / max(delivered, MIN_BPS) - rtt
        high = max(self.queuing_delay_s, ahead) > DELAY_THRESHOLD_S
        if not high:
            self._high_since = None
        elif self._high_since is None:
            self._high_since = (now, sample.bytes_acked)
        self._delay_high = self._delay_high + 1 if high else 0

    def _loss(self, sample: LinkSample) -> float:
        first = self._first(sample.now - LOSS_WINDOW_S)
        if first is None:
            return 0.0
        sent = sample.packets_sent - first.packets_sent
        lost = sample.packets_lost - first.packets_lost
        self._loss_packets = sent
        if sent < LOSS_MIN_PACKETS or lost <= 0:
            return 0.0
        return min(1.0, lost / sent)

    def _heavy_loss(self) -> bool:
        """The loss is above LOSS_THRESHOLD beyond chance: over few packets, random loss
        below it often looks above it (a one-sided test at about 95 %)."""
        n = max(1, self._loss_packets)
        margin = LOSS_Z * math.sqrt(LOSS_THRESHOLD * (1 - LOSS_THRESHOLD) / n)
        return self.loss > LOSS_THRESHOLD + margin

    def _backlog(self, sample: LinkSample) -> bool:
        backlog = sample.backlog
        limit = self.estimate / 8 * BACKLOG_S
        if backlog > limit and backlog >= self._last_backlog:
            self._backlog_high += 1
        else:
            self._backlog_high = 0
        self._last_backlog = backlog
        return self._backlog_high >= PERSIST

    def _first(self, since: float) -> LinkSample | None:
        """The sample a window from ``since`` starts at: the newest not later than ``since``,
        else the oldest kept (None: fewer than two samples)."""
        history = self._history
        if len(history) < 2:
            return None
        first = history[0]
        for s in history:
            if s.now > since:
                break
            first = s
        return first if first is not history[-1] else None

    def _rate(self, now: float, window: float, *, acked: bool) -> float | None:
        first = self._first(now - window)
        last = self._last
        if first is None or last is None:
            return None
        span = last.now - first.now
        if span < min(window, 0.2) * 0.9:
            return None
        delta = (
            (last.bytes_acked - first.bytes_acked)
            if acked
            else (last.bytes_sent - first.bytes_sent)
        )
        return max(0, delta) * 8 / span


def _clamp(bps: float, max_bps: float) -> float:
    return max(MIN_BPS, min(bps, max_bps))
