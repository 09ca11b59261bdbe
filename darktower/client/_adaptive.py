"""A session's part in adaptive media (docs/protocol.md §17): the MH's quality feedback and
active speakers as events, dynacast for its simulcast publications, and its own quality
reports on the streams it receives.

:class:`Adaptation` (``MeetingSession.adaptation``) handles the server's ``quality``,
``key_frame_request`` and ``active_speakers`` messages: each ``StreamQualityUpdate`` becomes a
:class:`QualityUpdate` event; one about a simulcast publication with ``layers`` pauses and
resumes its layers (``Publication.paused_layers``), and a resumed layer is asked for a key
frame as the MH asks: a :class:`KeyFrameRequest` event with the layer id, after the
QualityUpdate. The MH's own key frame request for a paused layer resumes it too (someone needs
it: its feedback may follow, or have been lost), and one for a layer that waits for its key
frame since a request of the last ``KEY_FRAME_REPEAT_S`` is not told twice, so that a resumed
layer costs one key frame. ``ActiveSpeakers`` becomes an event and
:attr:`Adaptation.speakers`.

Reports. What a subscription received (``Subscription.reception``: bitrate, loss from sequence
gaps) steers, through a ``StreamQualityUpdate`` on that stream, the cap of what the MH sends
this session (the route's target bitrate, docs/protocol.md §2, §17.2). A report is made the
way a receiver-side loss controller decides: loss over ``LOSS_HIGH`` caps the stream below
what came (``bitrate * (1 - loss/2)``); loss under ``LOSS_LOW`` lifts the cap (back to the
subscription's own ``max_bitrate``, 0: none), so that a cap never ratchets down on its own:
the MH's estimate does the rest. Between the two, nothing changes. A report is sent only when
the cap moves by a fifth or is lifted, at most once per ``REPORT_MIN_GAP_S`` per stream and
``REPORTS_PER_ROUND`` per round, for video subscriptions carried by their source (a derived
stream's bitrate is the server's). :meth:`Adaptation.report` makes one round;
:meth:`Adaptation.start_reports` has the session's own task make one every interval (opt-in).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Final, Protocol

import attrs
import trio

from darktower.errors import DarkTowerError
from darktower.model import StreamType
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._events import (
    ActiveSpeakers,
    KeyFrameRequest,
    QualityUpdate,
    SessionEnded,
    SessionEvent,
    StreamInfo,
)
from ._publication import Publication
from ._reception import ReceptionSample
from ._streams import Subscription

# Reports (see the module docstring). Default and least interval of the periodic reports.
REPORT_INTERVAL_S: Final = 2.0
MIN_REPORT_INTERVAL_S: Final = 0.5
# Per stream at most one report this often; per round at most this many (the MC allows a
# participant 1,000 messages a minute, docs/protocol.md §3.1: at most 4 a second here).
REPORT_MIN_GAP_S: Final = 2.0
REPORTS_PER_ROUND: Final = 4
# Loss thresholds (0..1) and the least cap a report sets, bits/s.
LOSS_HIGH: Final = 0.10
LOSS_LOW: Final = 0.02
MIN_CAP: Final = 50_000
# A sample of fewer frames than this says nothing about loss.
MIN_SAMPLE_FRAMES: Final = 10
# A cap moves only by at least this fraction of the one reported before.
CAP_STEP: Final = 0.2
# Bound on one report's request (the session may be reconnecting meanwhile).
REPORT_SEND_S: Final = 5.0
# A key frame request for a layer that waits for its key frame already (it was resumed, or
# asked for) is not told again within this long (counted in ``key_frames_merged``): the next
# frame of that layer is a key frame anyway. Beyond it, it is (the application may have missed
# the first). Remembered for at most KEY_FRAME_ASKS stream ids (the oldest forgotten first).
KEY_FRAME_REPEAT_S: Final = 1.0
KEY_FRAME_ASKS: Final = 64


class AdaptationOwner(Protocol):
    """What the adaptation uses of its session (a :class:`MeetingSession`)."""

    @property
    def publications(self) -> Mapping[str, Publication]: ...

    def put_event(self, event: SessionEvent) -> None: ...

    async def send_quality(
        self, stream_id: str, *, available_bitrate: int, packet_loss: float = 0.0, rtt_ms: int = 0
    ) -> None: ...


@attrs.frozen
class Report:
    """One report sent: ``available_bitrate`` is the cap asked for (0: none), ``packet_loss``
    and ``bitrate`` what was measured."""

    stream_id: str
    available_bitrate: int
    packet_loss: float
    bitrate: int


@attrs.define
class _Reported:
    subscription: Subscription
    cap: int | None = None  # the cap last reported; None: none yet (the subscription's own)
    at: float = -math.inf
    due: int | None = None  # a cap decided but not sent yet (the round was full)


def quality_message(
    stream_id: str, available_bitrate: int, packet_loss: float, rtt_ms: int
) -> sig.ClientMessage:
    return sig.ClientMessage(
        quality=sig.StreamQualityUpdate(
            stream_id=stream_id,
            available_bitrate=available_bitrate,
            packet_loss=packet_loss,
            rtt_ms=rtt_ms,
        )
    )


def decide(sample: ReceptionSample | None, current: int, own_max: int) -> int:
    """The cap to ask for after ``sample``, given the ``current`` one (0: none) and the
    subscription's own ``max_bitrate`` (0: none)."""
    if sample is None or sample.expected < MIN_SAMPLE_FRAMES:
        return current
    if sample.loss > LOSS_HIGH:
        cap = max(MIN_CAP, int(sample.bitrate * (1 - sample.loss / 2)))
        return min(cap, own_max) if own_max else cap
    if sample.loss < LOSS_LOW:
        return own_max
    return current


def _moved(cap: int, current: int) -> bool:
    if cap == current:
        return False
    if not cap or not current:
        return True
    return abs(cap - current) >= CAP_STEP * current


class Adaptation:
    """See the module docstring. ``speakers``: the last :class:`ActiveSpeakers` (dominant
    first); ``reports``: reports sent; ``report_errors``: reports the MC refused or that a
    reconnection interrupted; ``key_frames_merged``: key frame requests not told again."""

    def __init__(
        self,
        owner: AdaptationOwner,
        subscriptions: Mapping[str, Subscription],
        stream_of: Callable[[str], StreamInfo | None],
    ) -> None:
        self._owner = owner
        self._subscriptions = subscriptions
        self._stream_of = stream_of
        self.speakers: tuple[str, ...] = ()
        self.reports = 0
        self.report_errors = 0
        self.key_frames_merged = 0
        self._asked: dict[str, float] = {}  # stream id -> when a key frame was asked for
        self._reported: dict[str, _Reported] = {}  # bounded by the subscriptions (pruned)
        self.report_interval_s: float | None = None  # None: no periodic reports
        self._toggled = trio.Event()

    def handlers(self) -> dict[str, Callable[[sig.ServerMessage], None]]:
        """The session's handlers of the server messages this part takes."""
        return {
            "quality": self.on_quality,
            "key_frame_request": self.on_key_frame_request,
            "active_speakers": self.on_speakers,
        }

    def on_quality(self, m: sig.ServerMessage) -> None:
        update = QualityUpdate.from_pb(m.quality)
        self._owner.put_event(update)
        if (subscription := self._subscriptions.get(update.stream_id)) is not None:
            if update.paused:
                # LastN holds it back: the frames that do not come meanwhile are not loss, and
                # the numbering after the release starts a count of its own.
                subscription.reception.restart()
            subscription.quality = update
        publication = self._owner.publications.get(update.stream_id)
        if publication is not None:
            publication.quality = update
            if update.layers and not publication.closed:
                for layer_id in publication._feedback(update.layers):
                    self._ask_key_frame(layer_id)

    def on_key_frame_request(self, m: sig.ServerMessage) -> None:
        """The MH needs a key frame of one stream id (a layer's, for simulcast). One of a
        paused layer resumes it (someone needs it); one of a layer that waits for a key frame
        since a request of the last KEY_FRAME_REPEAT_S is merged with it."""
        wire = m.key_frame_request.stream_id
        publication = next((p for p in self._owner.publications.values() if wire in p.wires), None)
        asked = self._asked.get(wire)
        if publication is not None and publication._key_frame_asked(wire):
            if asked is not None and trio.current_time() - asked < KEY_FRAME_REPEAT_S:
                self.key_frames_merged += 1
                return
        self._ask_key_frame(wire)

    def _ask_key_frame(self, wire: str) -> None:
        self._asked.pop(wire, None)
        self._asked[wire] = trio.current_time()
        if len(self._asked) > KEY_FRAME_ASKS:
            del self._asked[next(iter(self._asked))]
        self._owner.put_event(KeyFrameRequest(wire))

    def on_speakers(self, m: sig.ServerMessage) -> None:
        event = ActiveSpeakers.from_pb(m.active_speakers)
        self.speakers = event.participant_ids
        self._owner.put_event(event)

    # -- reports ---------------------------------------------------------------------------
    def start_reports(self, interval_s: float = REPORT_INTERVAL_S) -> None:
        """Have the session's own task make a report round every ``interval_s`` (at least
        ``MIN_REPORT_INTERVAL_S``) until :meth:`stop_reports` or the end of the session."""
        self.report_interval_s = max(MIN_REPORT_INTERVAL_S, interval_s)
        self._toggle()

    def stop_reports(self) -> None:
        self.report_interval_s = None
        self._toggle()

    def _toggle(self) -> None:
        self._toggled.set()
        self._toggled = trio.Event()

    async def run(self) -> None:
        """The periodic reports while started. Runs until cancelled (the session's run owns
        it); returns once the session is over."""
        while True:
            toggled = self._toggled
            if self.report_interval_s is None:
                await toggled.wait()
                continue
            with trio.move_on_after(self.report_interval_s):
                await toggled.wait()
            if not toggled.is_set():
                try:
                    await self._round([])
                except SessionEnded:
                    return

    async def report(self) -> list[Report]:
        """One round: measure each video subscription since the previous round and send the
        reports that are due (see the module docstring). Returns those sent. Raises
        SessionEnded once the session is over; a report the MC refused (the stream went) or
        that a reconnection interrupted is counted in ``report_errors``."""
        sent: list[Report] = []
        await self._round(sent)
        return sent

    async def _round(self, sent: list[Report]) -> None:
        """One report round, the reports sent added to ``sent``. Raises SessionEnded."""
        now = trio.current_time()
        due = []
        for stream_id in [s for s in self._reported if s not in self._subscriptions]:
            del self._reported[stream_id]
        for stream_id, subscription in self._subscriptions.items():
            info = self._stream_of(stream_id)
            if subscription.mix or subscription.derived is not None or subscription.closed:
                continue
            if info is None or info.stream_type is StreamType.AUDIO:
                continue
            state = self._reported.get(stream_id)
            if state is None or state.subscription is not subscription:
                state = self._reported[stream_id] = _Reported(subscription)
            sample = subscription.reception.sample(now)
            if subscription.quality is not None and subscription.quality.paused:
                continue  # held back by LastN: nothing to measure (docs/protocol.md §17.4)
            own = subscription.options.max_bitrate
            current = own if state.cap is None else state.cap
            cap = decide(sample, current if state.due is None else state.due, own)
            state.due = cap if _moved(cap, current) else None
            if state.due is not None and now - state.at >= REPORT_MIN_GAP_S:
                loss, bitrate = (sample.loss, sample.bitrate) if sample else (0.0, 0)
                due.append((state, Report(stream_id, cap, loss, bitrate)))
        due.sort(key=lambda d: d[0].at)  # the longest unreported first: every stream gets its turn
        for state, report in due[:REPORTS_PER_ROUND]:
            state.at = now
            if await self._send(report):
                state.cap, state.due = report.available_bitrate, None
                sent.append(report)

    async def _send(self, report: Report) -> bool:
        """Whether ``report`` was taken by the MC. Raises SessionEnded."""
        try:
            with trio.fail_after(REPORT_SEND_S):
                await self._owner.send_quality(
                    report.stream_id,
                    available_bitrate=report.available_bitrate,
                    packet_loss=report.packet_loss,
                )
        except SessionEnded:
            raise
        except (DarkTowerError, trio.TooSlowError, trio.BrokenResourceError):
            self.report_errors += 1  # NotFound (the stream went), RequestInterrupted ...
            return False
        self.reports += 1
        return True


__all__ = [
    "LOSS_HIGH",
    "LOSS_LOW",
    "REPORTS_PER_ROUND",
    "REPORT_INTERVAL_S",
    "REPORT_MIN_GAP_S",
    "Adaptation",
    "AdaptationOwner",
    "Report",
    "decide",
    "quality_message",
]
