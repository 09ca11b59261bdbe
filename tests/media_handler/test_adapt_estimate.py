"""The bandwidth estimator with plain numbers: a fluid model of a rate-capped link with a
queue, random loss and a sender that sends what the layer choice gives it plus the padding the
estimator asks for."""

from __future__ import annotations

import random
from collections import deque

from darktower.media_handler._estimate import (
    MAX_BACKOFF_S,
    MIN_BPS,
    PROBE_BACKOFF_S,
    PROBE_QUIET_DELAY_S,
    PROBE_QUIET_S,
    BandwidthEstimator,
    LinkSample,
)

TICK = 0.1
PACKET = 1200


class Link:
    """A link of ``cap`` bits/s (None: unlimited) behind a queue, ``base`` RTT, random loss."""

    def __init__(
        self, cap: float | None, base: float = 0.01, loss: float = 0.0, ack_ticks: int = 0
    ) -> None:
        self.cap = cap
        self.base = base
        self.loss = loss
        self.queue = 0.0  # bytes
        self.sent = 0
        self.acked = 0
        self.packets = 0
        self.lost = 0
        self.rng = random.Random(7)
        self.now = 0.0
        self.padding = 0  # bytes the estimator asked for at the last tick
        self.padding_out = True  # False: the padding asked for never leaves
        # Acknowledgements come this many ticks late (a long path): (acked, lost) then.
        self.late: deque[tuple[int, int]] = deque([(0, 0)] * ack_ticks)

    def step(self, send_bps: float) -> LinkSample:
        self.now += TICK
        data = send_bps * TICK / 8
        packets = int(data // PACKET)
        lost = sum(1 for _ in range(packets) if self.rng.random() < self.loss)
        self.sent += int(data)
        self.packets += packets
        self.lost += lost
        self.queue += data - lost * PACKET
        out = self.queue if self.cap is None else min(self.queue, self.cap * TICK / 8)
        self.queue -= out
        self.acked += int(out)
        rtt = self.base + (0.0 if self.cap is None else self.queue * 8 / self.cap)
        self.late.append((self.acked, self.lost))
        acked, lost = self.late.popleft()
        return LinkSample(
            now=self.now,
            rtt_s=rtt,
            bytes_sent=self.sent,
            bytes_acked=acked,
            packets_sent=self.packets,
            packets_lost=lost,
        )


def run(
    est: BandwidthEstimator,
    link: Link,
    seconds: float,
    media: float | None = None,
    want: float = 0.0,
    trace: list[tuple[float, float, float]] | None = None,
    causes: set[str] | None = None,
) -> None:
    """Send ``media`` bits/s (None: what the estimate allows, as a layer choice would, up to
    ``want``) and the estimator's padding for ``seconds``."""
    for _ in range(round(seconds / TICK)):
        rate = media if media is not None else min(want, est.estimate * 0.9)
        sample = link.step(rate + (link.padding * 8 / TICK if link.padding_out else 0.0))
        est.update(sample)
        link.padding = est.plan(want, link.now)
        if causes is not None:
            causes.add(est.cause)
        if trace is not None:
            trace.append((link.now, est.estimate, link.queue * 8 / link.cap if link.cap else 0))


def test_congestion_brings_the_estimate_to_the_cap() -> None:
    link = Link(cap=300_000)
    est = BandwidthEstimator(now=0.0, max_bps=100e6, initial_bps=1_000_000)
    causes: set[str] = set()
    run(est, link, 0.5, media=550_000, causes=causes)
    # The queue grows at 250 kbit/s: congestion within a few ticks, the estimate near the cap.
    assert est.congested or est.last_congested_at > 0
    assert causes == {"", "delay"}
    assert 0.7 * 300_000 <= est.estimate <= 300_000


def test_an_application_limited_sender_does_not_raise_the_estimate_past_its_rate() -> None:
    link = Link(cap=None)
    est = BandwidthEstimator(now=0.0, max_bps=100e6, initial_bps=200_000)
    run(est, link, 10.0, media=200_000)
    assert 200_000 <= est.estimate <= 1.5 * 200_000 * 1.01
    assert not est.probing  # nothing more wanted: no probe


def test_random_loss_below_the_threshold_keeps_the_estimate() -> None:
    link = Link(cap=None, loss=0.05)
    est = BandwidthEstimator(now=0.0, max_bps=100e6, initial_bps=600_000)
    run(est, link, 10.0, media=550_000)
    assert 0.04 < est.loss < 0.1
    assert est.estimate >= 600_000
    assert est.last_congested_at < 0


def test_heavy_loss_is_congestion() -> None:
    link = Link(cap=None, loss=0.2)
    est = BandwidthEstimator(now=0.0, max_bps=100e6, initial_bps=2_000_000)
    causes: set[str] = set()
    run(est, link, 4.0, media=550_000, causes=causes)
    assert est.last_congested_at > 0
    assert est.estimate < 0.8 * 2_000_000
    assert not est.probing
    assert causes == {"", "loss"}


def test_a_backlog_that_does_not_shrink_is_congestion() -> None:
    # A quarter of a second at the estimate waits at this end, and grows: the peer or the
    # window holds it back, whatever the RTT says.
    est = BandwidthEstimator(now=0.0, max_bps=100e6, initial_bps=1_000_000)
    causes = []
    for i in range(1, 5):
        est.update(LinkSample(now=i * TICK, rtt_s=0.01, backlog=40_000 + i * 1000))
        causes.append(est.cause)
    assert causes == ["", "", "backlog", "backlog"]


def test_a_probe_climbs_back_once_the_cap_lifts() -> None:
    link = Link(cap=300_000)
    est = BandwidthEstimator(now=0.0, max_bps=100e6, initial_bps=1_000_000)
    trace: list[tuple[float, float, float]] = []
    run(est, link, 6.0, want=550_000, trace=trace)
    capped = est.estimate
    assert 0.7 * 300_000 <= capped <= 1.3 * 300_000
    # Failed probes on the capped link each cost little queue: the estimator stops them at the
    # first sign of queuing delay.
    worst_queue = max(q for t, _, q in trace if t > 3.0)
    assert worst_queue < 0.25
    assert est.backoff_s == MAX_BACKOFF_S
    link.cap = None
    lifted = link.now
    while est.estimate < 550_000 and link.now < lifted + 10:
        run(est, link, TICK, want=550_000)
    assert est.estimate >= 550_000
    assert link.now - lifted <= MAX_BACKOFF_S + 1.0
    assert est.probe_succeeded_at > lifted


def test_the_estimate_stays_within_its_bounds() -> None:
    link = Link(cap=10_000)
    est = BandwidthEstimator(now=0.0, max_bps=400_000, initial_bps=1_000_000)
    assert est.estimate == 400_000
    run(est, link, 3.0, media=300_000)
    assert est.estimate == MIN_BPS


def test_an_absurd_layer_is_probed_one_step_at_a_time() -> None:
    """A publisher's layer of 4 Gbit/s (hostile) makes a subscriber want it: each probe aims at
    most 2.5 times the estimate, never at the budget, so a capped path pays a small queue."""
    link = Link(cap=300_000)
    est = BandwidthEstimator(now=0.0, max_bps=100e6, initial_bps=1_000_000)
    trace: list[tuple[float, float, float]] = []
    run(est, link, 8.0, want=4e9, trace=trace)
    assert max(q for t, _, q in trace if t > 3.0) < 0.25
    assert est.estimate <= 1.3 * 300_000


def test_a_probe_under_random_loss_succeeds() -> None:
    """8 % of the packets lost at random, no cap: a probe's padding ramps up, so the path
    delivers less than the probe's target but what the probe sent; the probe succeeds at once
    (judged against its target, it failed and the next waited MAX_BACKOFF_S)."""
    link = Link(cap=None, loss=0.08)
    est = BandwidthEstimator(now=0.0, max_bps=100e6, initial_bps=300_000)
    run(est, link, 3.0, media=280_000, want=700_000)
    assert est.probe_succeeded_at > 0
    assert est.estimate >= 700_000


def test_no_probe_on_a_standing_queue_nor_right_after_a_switch() -> None:
    """A path that keeps a queue (its delay above the quiet threshold) is full: no probe.
    Once it is quiet, a switch (settle()) holds the next probe for PROBE_QUIET_S."""
    link = Link(cap=300_000)
    est = BandwidthEstimator(now=0.0, max_bps=100e6, initial_bps=280_000)
    run(est, link, 2.0, media=200_000)  # the base RTT
    link.queue = 1_125  # 30 ms at the cap (below congestion), kept: the media fills the link
    run(est, link, 5.0, media=300_000, want=600_000)
    assert not est.probing and est.probe_succeeded_at < 0
    assert est.queuing_delay_s > PROBE_QUIET_DELAY_S
    link.queue = 0.0
    drained = link.now
    while not est.probing and link.now < drained + 2.0:
        run(est, link, TICK, media=200_000, want=600_000)
    assert est.probing  # quiet for long enough: a probe
    assert PROBE_QUIET_S <= link.now - drained <= PROBE_QUIET_S + 2 * TICK
    # A switch on a quiet path: the next probe waits as long.
    est = BandwidthEstimator(now=0.0, max_bps=100e6, initial_bps=280_000)
    link = Link(cap=None)
    run(est, link, 3.0, media=200_000)
    est.settle(link.now)
    settled = link.now
    while not est.probing and link.now < settled + 2.0:
        run(est, link, TICK, media=200_000, want=600_000)
    assert PROBE_QUIET_S <= link.now - settled <= PROBE_QUIET_S + 2 * TICK


def test_a_probe_on_a_long_path_succeeds() -> None:
    """Acknowledgements and loss reports 200 ms late, no cap, no loss: the probe is judged by
    what was sent and lost, not by what was acknowledged by its end (the ramp's last bytes
    would still be in flight)."""
    link = Link(cap=None, base=0.2, ack_ticks=2)
    est = BandwidthEstimator(now=0.0, max_bps=100e6, initial_bps=300_000)
    run(est, link, 3.0, media=280_000, want=700_000)
    assert est.probe_succeeded_at > 0
    assert est.estimate >= 700_000


def test_a_probe_whose_padding_does_not_get_out_fails() -> None:
    """The media goes, the padding never does: nothing proves the higher rate, however close
    to the media rate the probe aims."""
    link = Link(cap=None)
    link.padding_out = False
    est = BandwidthEstimator(now=0.0, max_bps=100e6, initial_bps=1_000_000)
    while not est.probing and link.now < 5.0:
        run(est, link, TICK, media=1_000_000, want=1_300_000)
    assert est.probing
    while est.probing:
        run(est, link, TICK, media=1_000_000, want=1_300_000)
    assert est.probe_succeeded_at < 0
    assert est.estimate < 1_300_000
    assert est.backoff_s > PROBE_BACKOFF_S  # failed: the next one waits longer


def test_a_probe_aims_no_higher_than_the_padding_the_caller_can_send() -> None:
    """The caller sends at most 12.5 kB of padding a tick (1 Mbit/s): a probe from 1 Mbit/s
    that wants 10 aims at 2, gets its padding out and proves 2, not 10 nor 2.5 x 1."""
    link = Link(cap=None)
    est = BandwidthEstimator(now=0.0, max_bps=100e6, initial_bps=1_000_000)
    while est.probe_succeeded_at < 0 and link.now < 5.0:
        est.update(link.step(1_000_000 + link.padding * 8 / TICK))
        link.padding = est.plan(10e6, link.now, 1_000_000, max_padding=12_500)
        assert link.padding <= 12_500
    assert est.probe_succeeded_at > 0
    assert 1_900_000 <= est.estimate <= 2_100_000
