"""Active speakers and LastN of one room (docs/protocol.md §17.4). Sans-IO: no trio, time is a
parameter (the MH's ``trio.current_time()``, in seconds).

**The rule.** Every audio frame's level (docs/protocol.md §17.1) scores the dB it lies above
:data:`SPEECH_LEVEL` (quieter frames score 0). Each tick folds the scores heard since the last
tick into two averages per participant: a short one (:data:`SHORT_TAU_S`: with ticks 50-100 ms
apart, about the last 100 ms: "speaking now, how loud") and a long one (:data:`LONG_TAU_S`, about
a second: "has been speaking"). A participant is
*ahead* of the dominant speaker while it is speaking now (its mean since the last tick at least
:data:`MIN_SPEECH`) and its short average beats both of the dominant's averages by
:data:`SWITCH_MARGIN`; one that stays ahead for :data:`SWITCH_HOLD_S` takes over. So a cough
is ahead for at most about its own length (noises up to 200 ms never take over), a louder
speaker takes over within 0.3-0.5 s of starting (0.2-0.4 s after the louder one is ahead, and
then the hold; see tests/media_handler/test_speaker.py), and the dominant's pauses between
phrases are covered by its long average. A room with no dominant yet compares against zero. Silence (no frames, or frames below
the threshold) decays the averages; a frame without a level is not counted at all (a client
that sends no levels is never a speaker, and takes its place in ``last_n`` by join order).
The threshold is fixed: no noise floor is learnt per participant.

**The list.** The dominant speaker first, then the earlier dominant speakers, most recent
first: the order in which participants last became dominant (as Jitsi orders its LastN), at
most :data:`MAX_SPEAKERS` long. ``tick`` returns it when it changed and at least
:data:`MIN_UPDATE_INTERVAL_S` passed since the list it last returned (so at most 2 a second,
and a change after a quiet spell goes out at once); a change held back goes out at the first
tick allowed. ``last_n(n)`` continues that order with the participants that never were
dominant, in the order the tracker first heard of them, so that a room nobody spoke in yet
still has n videos to show.

**Bounds.** State per participant only (a few numbers), made by ``join``/``on_level`` and
dropped by ``forget``; the list is capped. The MH bounds the participants (its room's
members), so the tracker does not.

**Wiring in the MH** (one :class:`SpeakerTracker` per ``MediaRoom``):

* a member registered: ``tracker.join(member.id)`` (its place among the never-dominant);
* every audio frame admitted on a publish stream (``MediaPlane._on_frame``, audio only):
  ``tracker.on_level(member.id, audio_level_of(frame.raw), now)``: two byte reads and a dict
  look-up; ``None`` (no level) returns at once;
* a member forgotten (``RoomRegistry.forget_member``): ``tracker.forget(member.id)``;
* the MH's periodic loop, every 50 ms per room with audio (100 ms adds up to 0.1 s to a switch):
  ``speakers = tracker.tick(trio.current_time())``; if it is not ``None``:
  ``telemetry.publish(mc_pb.TelemetryEvent(meeting_id=room.id,
  active_speakers=mc_pb.SpeakerList(participant_ids=speakers)))``, and recompute the LastN
  holds: ``held = last_n_holds(routes, tracker.last_n(n + 1), n=n,
  members=len(room.members), room_size=...)`` (``--last-n`` and ``--last-n-room-size``,
settings the wiring adds) with one
  :class:`VideoRoute` per video subscription (``pinned`` from its RoutingOptions); a
  subscription that enters ``held`` stops receiving video (``paused`` in its quality update,
  docs/protocol.md §17.2), one that leaves it resumes at a key frame. Recompute the holds also
  when routes, pins or members change (``last_n`` is cheap to ask again).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from typing import Final

import attrs

from darktower.model import ParticipantId, StreamId

# A level (-dBov) quieter than this is no speech: it scores 0. A frame at level L scores
# SPEECH_LEVEL - L, so speech at -20 dBov scores 30, a shout at -5 dBov 45.
SPEECH_LEVEL: Final = 50
# Time constants of the two averages of the scores.
SHORT_TAU_S: Final = 0.05
LONG_TAU_S: Final = 0.8
# The least mean score since the last tick that counts as speaking now (a challenger must be).
MIN_SPEECH: Final = 3.0
# How much louder (in score, i.e. dB) a challenger's short average must be than the dominant's.
SWITCH_MARGIN: Final = 2.0
# How long a challenger must stay ahead to take over (a cough of 100 ms is ahead for less).
SWITCH_HOLD_S: Final = 0.25
# Rate limit of the lists tick() returns (docs/protocol.md §17.4: at most 2 updates a second).
MIN_UPDATE_INTERVAL_S: Final = 0.5
# Length bound of the speaker list (what ActiveSpeakers carries to every member).
MAX_SPEAKERS: Final = 10
# Times within this of a bound count as reaching it (ticks at float multiples of 50 ms).
_EPSILON: Final = 1e-6


class _Voice:
    """What the tracker keeps of one participant. Plain slots: on_level touches it per frame."""

    __slots__ = ("ahead_since", "dominated", "frames", "heard", "joined", "long", "score", "short")

    def __init__(self, joined: int) -> None:
        self.joined = joined  # the tracker's serial of its first appearance: the stable order
        self.dominated = 0  # the serial of its last turn as dominant speaker, 0: never
        self.score = 0  # scores of the frames since the last tick
        self.frames = 0  # frames with a level since the last tick
        self.heard: float | None = None  # when its last frame with a level came
        self.short = 0.0
        self.long = 0.0
        self.ahead_since: float | None = None  # ahead of the dominant speaker since


class SpeakerTracker:
    """The dominant and recent speakers of one room, from the audio levels of its frames.

    Feed it with :meth:`on_level` per audio frame and call :meth:`tick` periodically; see the
    module docstring for the rule, the bounds and the MH's call sites.
    """

    def __init__(self) -> None:
        self._voices: dict[ParticipantId, _Voice] = {}
        self._serial = 0  # gives out _Voice.joined and _Voice.dominated, increasing
        # The order of the last dominant turns, most recent first; [0] is the dominant speaker.
        self._speakers: list[ParticipantId] = []
        self._last_tick: float | None = None
        self._sent: list[ParticipantId] = []  # the list tick() returned last
        self._sent_at = -math.inf

    def _next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def join(self, participant_id: ParticipantId) -> None:
        """Know ``participant_id`` before it is heard (its place in :meth:`last_n`)."""
        if participant_id not in self._voices:
            self._voices[participant_id] = _Voice(self._next_serial())

    def on_level(self, participant_id: ParticipantId, level: int | None, now: float) -> None:
        """One audio frame of ``participant_id`` at ``level`` (0..127 in -dBov, as
        ``audio_level_of`` gives it; ``None``: the frame has no level, ignored), arrived at
        ``now``. Cheap: the averaging waits for :meth:`tick`."""
        if level is None:
            return
        voice = self._voices.get(participant_id)
        if voice is None:
            voice = self._voices[participant_id] = _Voice(self._next_serial())
        voice.frames += 1
        voice.heard = now
        if level < SPEECH_LEVEL:
            voice.score += SPEECH_LEVEL - level

    def forget(self, participant_id: ParticipantId) -> None:
        """``participant_id`` left: its state goes, and so does its place in the list (the next
        most recent speaker becomes dominant)."""
        if self._voices.pop(participant_id, None) is not None:
            if participant_id in self._speakers:
                self._speakers.remove(participant_id)

    def tick(self, now: float) -> list[ParticipantId] | None:
        """Fold the levels heard since the last tick, switch the dominant speaker if a
        challenger stayed ahead long enough, and return the speaker list if it changed since
        the list last returned and the rate limit allows; else ``None``. A ``now`` earlier than
        the last tick's (or not a finite number) counts as the last tick's; the first tick
        only starts the clock."""
        last = self._last_tick
        if not -math.inf < now < math.inf or (last is not None and now < last):
            now = 0.0 if last is None else last  # earlier than the last tick, or not a number
        self._last_tick = now
        if last is None or now == last:
            return self._due(now)  # nothing to average over yet: the scores wait
        elapsed = now - last
        short_keep = math.exp(-elapsed / SHORT_TAU_S)
        long_keep = math.exp(-elapsed / LONG_TAU_S)
        dominant_id = self._speakers[0] if self._speakers else None
        speaking: list[tuple[ParticipantId, _Voice]] = []
        for participant_id, voice in self._voices.items():
            mean = min(voice.score / voice.frames, SPEECH_LEVEL) if voice.frames else 0.0
            voice.score = voice.frames = 0
            voice.short = voice.short * short_keep + mean * (1.0 - short_keep)
            voice.long = voice.long * long_keep + mean * (1.0 - long_keep)
            if mean >= MIN_SPEECH and participant_id != dominant_id:
                speaking.append((participant_id, voice))
            else:
                voice.ahead_since = None
        self._challenge(dominant_id, speaking, now)
        return self._due(now)

    def _challenge(
        self,
        dominant_id: ParticipantId | None,
        speaking: list[tuple[ParticipantId, _Voice]],
        now: float,
    ) -> None:
        """Who is ahead of the dominant speaker, and whether one has been long enough."""
        bar = SWITCH_MARGIN
        if dominant_id is not None:
            dominant = self._voices[dominant_id]
            bar += max(dominant.short, dominant.long)
        winner: tuple[ParticipantId, _Voice] | None = None
        for participant_id, voice in speaking:
            if voice.short <= bar:
                voice.ahead_since = None
                continue
            if voice.ahead_since is None:
                voice.ahead_since = now
            elif now - voice.ahead_since >= SWITCH_HOLD_S - _EPSILON and (
                winner is None or voice.short > winner[1].short
            ):
                winner = (participant_id, voice)
        if winner is None:
            return
        participant_id, voice = winner
        voice.dominated = self._next_serial()
        for other in self._voices.values():
            other.ahead_since = None  # measured against the new dominant from now on
        speakers = self._speakers
        if participant_id in speakers:
            speakers.remove(participant_id)
        speakers.insert(0, participant_id)
        del speakers[MAX_SPEAKERS:]

    def _due(self, now: float) -> list[ParticipantId] | None:
        if self._speakers == self._sent or now - self._sent_at < MIN_UPDATE_INTERVAL_S - _EPSILON:
            return None
        self._sent = list(self._speakers)
        self._sent_at = now
        return list(self._speakers)

    @property
    def dominant(self) -> ParticipantId | None:
        """The dominant speaker now (possibly not returned by :meth:`tick` yet)."""
        return self._speakers[0] if self._speakers else None

    @property
    def speakers(self) -> list[ParticipantId]:
        """The speaker list now (possibly not returned by :meth:`tick` yet)."""
        return list(self._speakers)

    def heard_at(self, participant_id: ParticipantId) -> float | None:
        """When the last frame with a level of ``participant_id`` came, None if never."""
        voice = self._voices.get(participant_id)
        return None if voice is None else voice.heard

    def __len__(self) -> int:
        """Participants the tracker holds state for."""
        return len(self._voices)

    def last_n(self, n: int) -> list[ParticipantId]:
        """The ``n`` participants to show: the most recent dominant speakers first (most
        recent first, beyond the list's cap too), then those never dominant in the order the
        tracker first knew them. O(participants · log n)."""
        if n <= 0:
            return []
        voices = self._voices
        return heapq.nsmallest(n, voices, key=lambda p: (-voices[p].dominated, voices[p].joined))


@attrs.frozen
class VideoRoute:
    """One video subscription, as :func:`last_n_holds` sees it. ``pinned``: the subscriber (or
    the MC's RoutingOptions) pinned it; LastN never holds it back."""

    subscriber: ParticipantId
    publisher: ParticipantId
    stream_id: StreamId
    pinned: bool = False


def last_n_holds(
    routes: Iterable[VideoRoute],
    order: Sequence[ParticipantId],
    *,
    n: int,
    members: int,
    room_size: int,
) -> set[VideoRoute]:
    """The video subscriptions LastN holds back (docs/protocol.md §17.4).

    Only in a room of more than ``room_size`` members (``members`` of them); then each
    subscriber receives the videos of the first ``n`` participants of ``order`` other than
    itself, and those it pinned. ``order`` is :meth:`SpeakerTracker.last_n` of ``n + 1`` (one
    more, for a subscriber that is itself among them); a longer one is fine. Pass video routes
    only: audio is never held. O(routes + subscribers · n).
    """
    if members <= room_size:
        return set()
    n = max(n, 0)
    top = order[:n]
    spare = order[n : n + 1]  # shown instead of a subscriber that is itself in the top n
    visible: dict[ParticipantId, frozenset[ParticipantId]] = {}
    held: set[VideoRoute] = set()
    for route in routes:
        if route.pinned:
            continue
        shown = visible.get(route.subscriber)
        if shown is None:
            if route.subscriber in top:
                shown = frozenset([*(p for p in top if p != route.subscriber), *spare])
            else:
                shown = frozenset(top)
            visible[route.subscriber] = shown
        if route.publisher not in shown:
            held.add(route)
    return held
