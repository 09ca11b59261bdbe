"""Named limits of the Media Handler service (STYLE 8: one module, each with its policy).

The per-subscription queue bounds live in ``_queue.py`` (DEFAULT_MAX_FRAMES/BYTES) and the
byte-budget burst in ``_budget.py``; settings override the ones an operator may tune.
"""

from __future__ import annotations

from typing import Final

# Participants (registered, connected or not) per room. Policy: RegisterParticipant beyond it
# is refused with CAPACITY_EXCEEDED; nothing is allocated.
MAX_PARTICIPANTS_PER_ROOM: Final = 100
# Streams a participant may register (simulcast layers count one each) and publish at once.
# Policy: RegisterParticipant over it is refused with CAPACITY_EXCEEDED; a publish stream over
# it is reset with STREAM_ERROR.
MAX_STREAMS_PER_PARTICIPANT: Final = 32
# Rooms per MH. Policy: the first RegisterParticipant of one more room gets CAPACITY_EXCEEDED.
MAX_ROOMS: Final = 1000
# A registration not followed by a media connection within this long is forgotten (its token
# lives CONNECTION_TOKEN_TTL_S; the margin covers the token verifier's leeway).
REGISTRATION_TTL_S: Final = 75.0
# How often each room looks for expired registrations.
REGISTRATION_SWEEP_S: Final = 5.0
# Largest frame payload accepted from a publisher. Policy: the decoder resets the stream with
# STREAM_ERROR before buffering any of it (FramePayloadTooLarge).
MAX_FRAME_PAYLOAD: Final = 1024 * 1024
# Bytes read from a publisher's stream per receive; bounds the decoder's partial frame pieces
# held between two checkpoints.
RECEIVE_CHUNK: Final = 64 * 1024
# Bytes of queued frames a subscription writes in one send: frames popped for a write are
# committed (the drop policy no longer applies to them), so this bounds what escapes it.
SEND_BATCH_BYTES: Final = 64 * 1024
# Telemetry events queued per Telemetry subscriber (an MC). Policy when full: drop the oldest
# event and count it; the router never waits for an MC.
TELEMETRY_QUEUE_SIZE: Final = 4096
# Telemetry subscribers at once. Policy: one more Telemetry call gets CAPACITY_EXCEEDED.
MAX_TELEMETRY_SUBSCRIBERS: Final = 16
# Telemetry reports per stream: one per this many seconds.
TELEMETRY_INTERVAL_S: Final = 1.0
# Byte-rate budgets per participant (bytes/s, in = what it publishes, out = what it is sent).
# Policy when exceeded: frames are dropped by priority (_budget.py), counted as "budget".
DEFAULT_BUDGET_IN_BYTES_PER_S: Final = 2_500_000
DEFAULT_BUDGET_OUT_BYTES_PER_S: Final = 12_500_000
# Registration with the MC: heartbeat interval when the MC does not say, and the backoff
# between failed attempts (doubling up to the maximum).
HEARTBEAT_INTERVAL_S: Final = 5.0
REGISTER_BACKOFF_S: Final = 0.5
REGISTER_BACKOFF_MAX_S: Final = 10.0
# Deadline of each call to the MC.
MC_CALL_DEADLINE_S: Final = 5.0
# Grace for closing a participant's session after its scope ended.
SESSION_CLOSE_CODE_BASE: Final = 0x4D00  # + LeaveReason: the client reads why it was closed
