"""Every bound of the Meeting Controller, each with its policy (docs/architecture.md §5.3)."""

from __future__ import annotations

from darktower.protocol import _bounds

# Per-participant outbound signaling queue (messages). Full: the participant is a slow reader
# and leaves with CONNECTION_LOST; a fan-out never waits for one session (send_nowait).
OUTBOUND_QUEUE_SIZE = 256
# A new session must send its JoinRequest within this many seconds, or it is closed.
HANDSHAKE_TIMEOUT_S = 10.0
# Display names (the join token's) are cut to this many characters: the signaling bound.
MAX_NAME_CHARS = _bounds.MAX_NAME_CHARS
# Streams one participant may publish; more are refused with CAPACITY_EXCEEDED.
MAX_PUBLISHED_STREAMS = 16
# Chat (docs/protocol.md §18.3): messages one participant may send, per second and at once
# (RATE_LIMITED with retry_after_s beyond; a resume does not refill it).
CHAT_PER_S = 5.0
CHAT_BURST = 10
# ... and a whole meeting: each message takes a slot in every member's outbox
# (settings.outbound_queue_size, 256), so the meeting's senders together are bounded too
# (RATE_LIMITED with retry_after_s to the sender beyond).
ROOM_CHAT_PER_S = 20.0
ROOM_CHAT_BURST = 40
# A chat message is not queued for a member whose outbox is this full or more (a slow
# reader): it has the history at its resume, and its outbox keeps room for what it must get.
CHAT_OUTBOX_SHARE = 0.5
# A meeting's chat history, kept for its life on this MC: its newest messages, at most this
# many and this much text (UTF-8 bytes); the oldest are dropped.
CHAT_HISTORY_MESSAGES = 200
CHAT_HISTORY_BYTES = 256 * 1024
# What a member that joins or resumes gets of it: the newest it may see that fit this much
# text (and one message, 64 KiB), oldest first.
CHAT_CATCH_UP_BYTES = 48 * 1024
# Meetings one MC holds; AssignMeeting past it is refused with CAPACITY_EXCEEDED.
MAX_MEETINGS = 1000
# Participants over all meetings, reported to the GC as capacity.
MAX_PARTICIPANTS = 10_000
# (A meeting whose config says 0 gets darktower.model.DEFAULT_MAX_PARTICIPANTS at most.)

# Heartbeat health turns DEGRADED above this share of either capacity.
DEGRADED_LOAD = 0.9
# Calls to a Media Handler (RegisterParticipant, RouteMedia, RemoveParticipant) give up after.
MH_CALL_DEADLINE_S = 5.0
# A leave's StopRecording waits at most this long, so that the RemoveParticipant after it
# still fits the participant's cleanup grace (the MH ends a removed participant's recording
# anyway, with the reason of the removal).
RECORDING_STOP_DEADLINE_S = 1.0
# A transcode's target bitrate when the publisher declared no max_bitrate, bits per second
# (a subscriber's own max_bitrate, when lower, wins: docs/protocol.md §2.2).
DEFAULT_TRANSCODE_BITRATE = 1_000_000
# A subscriber of an audio stream gets its audio mix instead when the meeting has more audio
# publishers than this (docs/protocol.md §2.2); 0: never. --mix-above-audio-publishers.
MIX_ABOVE_AUDIO_PUBLISHERS = 10
# (An MH that has not heartbeated for MH_HEARTBEAT_TIMEOUT_S, darktower/protocol/heartbeats.py,
# gets no new rooms; after two heartbeat intervals, or at once when its telemetry stream's
# connection breaks, it is declared lost and its rooms move: _mh.py.)
# How often the MC looks for MHs that missed their heartbeats.
MH_LOSS_CHECK_S = 0.5
# A publish, subscribe or unpublish is sent to the room's MH, and again to the MH the room
# moved to meanwhile, at most this many times in all (a room that keeps moving: the last MH
# gets the member's state from the replay that follows each move).
MAX_MH_CALLS = 3
# A host's moderation waits this long at most for the Media Handler to remove the streams it
# ends (each removal is an MH call, to the room's MH and where it moved: docs/protocol.md
# §18.2); a stream not removed by then stays published and the moderation is INTERNAL_ERROR.
MODERATION_DEADLINE_S = MH_CALL_DEADLINE_S * MAX_MH_CALLS
# A member whose room moved gets its MediaReconnect from the new MH; if that MH cannot be
# reached, it is asked again after a pause doubling from the first value up to the second,
# this many times, while the member stays and the room stays there.
MOVE_RETRY_S = 0.5
MOVE_RETRY_MAX_S = 4.0
MOVE_RETRIES = 5

# Telemetry stream to an MH: reconnect after a failure, backing off up to the maximum.
TELEMETRY_BACKOFF_S = 0.5
TELEMETRY_BACKOFF_MAX_S = 10.0
# Registration with the GC: retry with backoff; calls give up after the deadline.
REGISTER_BACKOFF_S = 0.5
REGISTER_BACKOFF_MAX_S = 10.0
GC_CALL_DEADLINE_S = 5.0
# Join tokens one kick may revoke besides the kicked session's (a kick with ban); more are
# ignored. Each is kept until it expires.
MAX_REVOKED_TOKENS = 100
# A join token naming a key id the MC does not know makes it ask the GC for its keys at once
# (a heartbeat now), at most once per this many seconds: tokens with made-up key ids cannot
# make the MC call the GC more often. A join waits for that refresh at most GC_CALL_DEADLINE_S.
KEY_REFRESH_MIN_INTERVAL_S = 1.0
# A participant whose signaling connection is lost stays in its meeting, reconnecting, this
# long (docs/protocol.md §13); a resume presenting its token within it keeps the participant;
# after it the participant leaves with CONNECTION_LOST. 0: no window (and no resume tokens).
RESUME_GRACE_S = 15.0
# Resumes of one participant at most this often; a faster one is refused RATE_LIMITED (its token
# stays good). A real client resumes once per network change; a looping one would make the MC
# build the whole room's list and call the MH each time. Each resume also spends one message of
# the participant's signaling budget (docs/architecture.md §5.3).
MIN_RESUME_INTERVAL_S = 1.0
# Resume tokens of participants kicked or ended by the meeting's end are remembered (a digest
# and the reason) for RESUME_GRACE_S after the end, so a resume is refused with that reason
# rather than NOT_FOUND; beyond this many the oldest are forgotten (then: NOT_FOUND).
MAX_ENDED_RESUME_TOKENS = 10_000
# Writing SessionEnded to a leaving client (and its final error) is bounded by this.
SESSION_END_GRACE_S = 1.0
# Read size of the signaling stream (the decoder bounds a message at 64 KiB).
READ_SIZE = 64 * 1024
# The MC's keepalive interval is the transport's keepalive_for its idle timeout, at most this.
KEEPALIVE_INTERVAL_S = 15.0
# A meeting with nobody in it (never joined, or everybody left) ends after this long, with
# MEETING_ENDED ("the meeting stayed empty"); the GC learns it with the next heartbeat.
EMPTY_MEETING_TIMEOUT_S = 600.0
