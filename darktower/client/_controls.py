"""A session's publication state and moderation (docs/protocol.md §18.1, §18.2).

:class:`Controls` keeps this session's own :class:`PublicationState`: it starts from the join
token's ``pub`` claim (the kinds it may not publish are blocked), follows the MC's
``ParticipantUpdated`` about this session and its ``Moderated``, and sends the session's own
switches (``SetPublicationState``). Every change is a :class:`PublicationChanged` event with
``own`` set.

The switches act on the publications at once: a muted microphone (a camera turned off) stays
published and its frames are dropped by the library (``Publication.silenced``, counted in
``Publication.muted_dropped``), so that unmuting is instant and an application need not stop
its encoder to be silent; a camera turned on again starts at a key frame (a
``KeyFrameRequest``). A mute takes effect before the MC's answer (nothing more is sent from
the moment it is asked for), an unmute after it (the MC may refuse it: Forbidden, the kind is
blocked by a host). A host's ``Moderated`` ends the publications of the kinds it stops: the MH
has reset their media streams, and the session closes them (``Publication.ended_by_host``)
without an UnpublishStream (the MC ended them); so does any state of this session that says
a kind is blocked (a blocked kind has no stream at the MC, docs/protocol.md §18.1), which
covers a moderation while the session was reconnecting.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

import attrs

from darktower.model import StreamType
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._events import KeyFrameRequest, SessionEvent
from ._meeting_models import Moderated, ModerationAction, PublicationChanged, PublicationState
from ._publication import Publication

Request = Callable[[sig.ClientMessage], Awaitable[sig.ServerMessage]]


class Controls:
    """This session's publication state (see the module docstring). ``own_id`` is read
    through ``participant_id`` (it changes with a rejoin); ``publications`` is the session's
    mapping, ``remove`` takes one out of it, ``put`` hands the application an event."""

    def __init__(
        self,
        participant_id: Callable[[], str],
        publications: Mapping[str, Publication],
        remove: Callable[[Publication], None],
        put: Callable[[SessionEvent], None],
        *,
        may_publish: Iterable[str] | None = None,
    ) -> None:
        self._own_id = participant_id
        self._publications = publications
        self._remove = remove
        self._put = put
        self.publication = PublicationState.granted(may_publish)
        self._muting = PublicationState()  # switches turned on, not yet acknowledged
        self.moderations = 0  # Moderated messages received

    def handlers(self) -> dict[str, Callable[[sig.ServerMessage], None]]:
        return {"moderated": self._on_moderated}

    def prepare(self, publication: Publication) -> None:
        """A new publication follows the switch of its kind."""
        publication.silenced = self.publication.silenced(publication.stream_type)

    def changed(self, state: PublicationState) -> None:
        """This session's state is ``state`` now (the MC said so): an event if it changed, and
        the publications follow the switches. A publication of a kind blocked now has been
        ended by a host (a blocked kind has no stream at the MC, docs/protocol.md §18.1): also
        when the Moderated that says so was missed (a host moderated the session while it was
        reconnecting, and the MC tells its state after the resume)."""
        before, self.publication = self.publication, state
        for publication in list(self._publications.values()):
            if _blocked(state, publication.stream_type):
                self._end(publication)
        self._silence()
        if state != before:
            self._put(PublicationChanged(self._own_id(), state, before, own=True))

    def _silence(self) -> None:
        """The publications follow the switches, and a mute asked for but not answered yet."""
        state, muting = self.publication, self._muting
        quiet = attrs.evolve(
            state,
            audio_muted=state.audio_muted or muting.audio_muted,
            video_off=state.video_off or muting.video_off,
        )
        for publication in list(self._publications.values()):
            if publication._silence(quiet.silenced(publication.stream_type)):
                self._put(KeyFrameRequest(publication.stream_id))

    async def set(
        self, request: Request, audio_muted: bool | None, video_off: bool | None
    ) -> PublicationState:
        """Send the session's switches (None: as they are) and adopt them once acknowledged;
        a mute silences the publications at once (undone if the request fails). Raises what
        ``request`` raises (Forbidden to unmute a kind a host blocked)."""
        now = self.publication
        wanted = attrs.evolve(
            now,
            audio_muted=now.audio_muted if audio_muted is None else audio_muted,
            video_off=now.video_off if video_off is None else video_off,
        )
        # Whatever mutes does so at once; what unmutes waits for the answer.
        self._muting = PublicationState(audio_muted=wanted.audio_muted, video_off=wanted.video_off)
        self._silence()
        message = sig.SetPublicationState(
            audio_muted=wanted.audio_muted, video_off=wanted.video_off
        )
        try:
            await request(sig.ClientMessage(set_publication=message))
        except BaseException:
            self._muting = PublicationState()
            self._silence()
            raise
        self._muting = PublicationState()
        current = self.publication  # a ParticipantUpdated may have come meanwhile
        self.changed(
            attrs.evolve(current, audio_muted=wanted.audio_muted, video_off=wanted.video_off)
        )
        return self.publication

    async def restore(self, request: Request) -> None:
        """After a rejoin (a new participant, which the MC starts unmuted): send the switches
        again if one is on. Raises what ``request`` raises."""
        if self.publication.audio_muted or self.publication.video_off:
            await self.set(request, None, None)

    def rejoined(self, may_publish: Iterable[str] | None) -> None:
        """A rejoin: the new participant's grants are the new join token's; the switches stay
        (the publications stay silenced; :meth:`restore` tells the MC)."""
        granted = PublicationState.granted(may_publish)
        self.changed(
            attrs.evolve(
                granted,
                audio_muted=self.publication.audio_muted,
                video_off=self.publication.video_off,
            )
        )

    def resumed(self, own: sig.Participant | None) -> None:
        """A resume whose room lists this session (``own``): its state then (a host may have
        moderated it while it was away, docs/protocol.md §18.2). The MC may instead send a
        ParticipantUpdated about this session after the JoinResponse: the same follows."""
        if own is not None and own.HasField("publication"):
            self.changed(PublicationState.from_pb(own.publication))

    def _end(self, publication: Publication) -> None:
        self._remove(publication)
        publication._end_by_host()

    def _on_moderated(self, m: sig.ServerMessage) -> None:
        event = Moderated.from_pb(m.moderated)
        self.moderations += 1
        stopped = {action.stops for action in event.actions}
        for publication in list(self._publications.values()):
            if publication.stream_type in stopped:
                self._end(publication)
        self._put(event)
        self.changed(event.publication)


def _blocked(state: PublicationState, stream_type: StreamType) -> bool:
    if stream_type is StreamType.AUDIO:
        return state.audio_blocked
    if stream_type is StreamType.VIDEO_CAMERA:
        return state.video_blocked
    return state.screen_blocked


def moderation_message(
    participant_id: str, actions: Sequence[ModerationAction | str], message: str
) -> sig.ClientMessage:
    """The ModerateParticipant a host sends. Raises ValueError for an unknown action name."""
    wire = [ModerationAction(action).to_pb() for action in actions]
    return sig.ClientMessage(
        moderate=sig.ModerateParticipant(
            participant_id=participant_id, actions=wire, message=message
        )
    )


__all__ = ["Controls", "moderation_message"]
