"""The owner's moderation through the REST API (docs/protocol.md §18.2): the GC checks the
caller and the meeting, and the meeting's MC does the rest (``MeetingControl.
ModerateParticipant``), answering once every stream the actions end is gone at the Media
Handler."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from darktower.errors import Conflict
from darktower.global_controller import schemas
from darktower.global_controller._webhook_limits import MAX_EVENT_ID_LENGTH
from darktower.global_controller.service import GlobalController
from darktower.global_controller.store import ReportedBlocks
from darktower.model import MeetingId, ParticipantId
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import registry_pb2 as reg_pb
from darktower.protocol.tokens import AccessClaims

# REST name -> ModerationAction (docs/protocol.md §18.2).
ACTIONS: dict[str, int] = {
    "mute_audio": common_pb2.MODERATION_MUTE_AUDIO,
    "stop_video": common_pb2.MODERATION_STOP_VIDEO,
    "stop_screen": common_pb2.MODERATION_STOP_SCREEN,
    "allow_audio": common_pb2.MODERATION_ALLOW_AUDIO,
    "allow_video": common_pb2.MODERATION_ALLOW_VIDEO,
    "allow_screen": common_pb2.MODERATION_ALLOW_SCREEN,
}
assert tuple(ACTIONS) == schemas.MODERATION_ACTIONS


def publication_json(state: common_pb2.PublicationState) -> dict[str, bool]:
    return {
        "audio_muted": state.audio_muted,
        "video_off": state.video_off,
        "sharing": state.sharing,
        "audio_blocked": state.audio_blocked,
        "video_blocked": state.video_blocked,
        "screen_blocked": state.screen_blocked,
    }


async def moderate(
    gc: GlobalController,
    meeting_id: MeetingId,
    participant_id: ParticipantId,
    caller: AccessClaims,
    request: schemas.Moderate,
) -> dict[str, Any]:
    """Owner only (``Forbidden``); ``Conflict`` once the meeting has ended; the MC answers
    ``NotFound`` for a participant not in the meeting."""
    meeting = await gc.owned(meeting_id, caller)
    if not meeting.is_active:
        raise Conflict(f"meeting {meeting_id} has ended", details={"status": "ended"})
    controller = await gc.directory.controller_of(meeting)
    state = await gc.controllers.moderate(
        controller,
        meeting_id,
        participant_id,
        [ACTIONS[name] for name in request.actions],
        request.message,
    )
    return {"participant_id": participant_id, "publication": publication_json(state)}


def reported_blocks(events: Sequence[reg_pb.MeetingEvent]) -> list[ReportedBlocks]:
    """The ``participant_moderated`` events of an MC's report, in order, as the store keeps
    them (docs/protocol.md §18.2: a host's blocks stay with the participant's join identity
    across a rejoin); one without a meeting or a token id, or with a longer one, is skipped."""
    blocks: list[ReportedBlocks] = []
    for event in events:
        if event.WhichOneof("kind") != "participant_moderated":
            continue
        moderated = event.participant_moderated
        ids = (event.meeting_id, moderated.token_id)
        if not all(0 < len(i) <= MAX_EVENT_ID_LENGTH for i in ids):
            continue
        flags = (
            ("audio", moderated.audio_blocked),
            ("video", moderated.video_blocked),
            ("screen", moderated.screen_blocked),
        )
        kinds = frozenset(kind for kind, blocked in flags if blocked)
        blocks.append(ReportedBlocks(MeetingId(event.meeting_id), moderated.token_id, kinds))
    return blocks
