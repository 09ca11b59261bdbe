"""Named limits of the Media Handler service (one module, each with its policy).

A summary is in docs/architecture.md §5.4.

The per-subscription queue bounds live in ``_queue.py`` (DEFAULT_MAX_FRAMES/BYTES) and the
byte-budget burst in ``_budget.py``; settings override the ones an operator may tune.
"""

from __future__ import annotations

from typing import Final

from darktower.protocol.tokens import CONNECTION_TOKEN_TTL_S, DEFAULT_LEEWAY_S

# Participants (registered, connected or not) per room: the largest meeting the GC creates
# (max_participants at most 1,000). Policy: RegisterParticipant beyond it is refused with
# CAPACITY_EXCEEDED; nothing is allocated.
MAX_PARTICIPANTS_PER_ROOM: Final = 1000
# Streams a participant may register (simulcast layers count one each), and QUIC publish
# streams it may have open at once. Policy: RegisterParticipant over it is refused with
# CAPACITY_EXCEEDED; a publish stream beyond it is refused as it is accepted, before any of
# its bytes is read or buffered: reset and stopped with CAPACITY_EXCEEDED (counted in
# stream_errors as "TooManyPublishStreams"); the participant's other streams are untouched.
# Claiming one more unregistered stream id over it resets that stream with STREAM_ERROR.
MAX_STREAMS_PER_PARTICIPANT: Final = 32
# Bytes of partial frames (received, not yet complete) one participant's publish streams hold
# together, counted as they arrive. Four largest frames in progress at once: a key frame on
# each simulcast layer and a screen share. Policy when a received chunk would take the
# participant over it: the stream that received it is reset and stopped with
# CAPACITY_EXCEEDED and what it held is freed at once (before the next checkpoint); complete
# frames already routed stay routed, and the participant's other streams are untouched
# (counted in stream_errors as "PublishBufferFull"). With the transport's per-stream receive
# window (transport/_config.py) this bounds what one participant makes the MH hold to
# MAX_STREAMS_PER_PARTICIPANT * (STREAM_RECEIVE_WINDOW + RECEIVE_CHUNK) + this.
MAX_BUFFERED_BYTES_PER_PARTICIPANT: Final = 4 * 1024 * 1024
# Age bound of a queued frame: from when the MH received it (its own clock, read once per
# received chunk; the frame header's sender timestamp is never trusted) to when the
# subscription would hand it to the transport. A subscriber that could not read for a while
# gets live media, not a replay (docs/protocol.md §13). Policy: an older frame is dropped at
# the subscription's queue and counted as "stale"; a video stream that lost one resumes at a
# key frame (deltas up to the next queued key frame go as "waiting_for_keyframe", and a key
# frame is requested from the publisher if none is queued). A send to the subscriber that
# blocks longer than the bound (it does not read) is abandoned: its uni stream is reset, which
# discards what the transport still held of it, and the subscription goes on over a new uni
# stream, video from a key frame. The bound holds for frames already handed to the transport
# too: a stream whose oldest frame the subscriber has not acknowledged within it (QUIC flow or
# congestion control holds the bytes back) is abandoned the same way; the check costs one
# read of the stream's unacknowledged bytes per batch, and the subscription wakes for it when
# that frame comes due.
MAX_VIDEO_AGE_S: Final = 0.5
MAX_AUDIO_AGE_S: Final = 0.2
# Consecutive abandoned sends (each one a send, or frames sent, the subscriber did not take within
# the age bound, with no evidence of reading between: see READ_EVIDENCE_S) after which a subscription stops replacing
# its uni stream at once: 8 is 4 s of video, 1.6 s of audio, so a short blip costs nothing more.
# Policy past it: the subscription holds no stream and opens the next one only after a pause that
# doubles from the age bound up to STALLED_RETRY_MAX_S; that stream's first send is the probe:
# acknowledged within the bound, the subscriber gets live media again (video from a key
# frame) and the count restarts once it shows it reads; abandoned, the pause grows. Frames meanwhile age out of the bounded queue
# (counted "stale"). The subscription and its participant go on: a client stalled for good costs
# at most one stream (and its send window) per subscription at a time, opened at most once per
# STALLED_RETRY_MAX_S plus what its probe had (up to the age bound), and never more than
# docs/architecture.md §5.4 allows; a blip of a few seconds gets media back within
# STALLED_RETRY_MAX_S of its end. Independently of it, no replacement stream is opened while the
# peer grants no uni-stream credit (MAX_STREAMS), nor while the session is at its open-stream
# limit: the subscription waits as above (at least the age bound) and tries again.
MAX_ABANDONED_SENDS: Final = 8
STALLED_RETRY_MAX_S: Final = 1.0
# Evidence that a subscriber reads, which restarts the count above: the peer raised its credit
# on the stream (only its application's reads do that), or frames spanning this much media
# time were acknowledged on one stream. Acknowledgements alone are not: a client's QUIC stack
# acknowledges a whole stream window its application never reads, and restarting the count on
# them had a client stalled for good cycle a new stream every age bound. With this rule such a
# client costs one window per stream and reaches the pauses above, unless its windows hold this
# much media each (then it costs what a reading subscriber does).
READ_EVIDENCE_S: Final = 1.0
# A participant whose media connection was lost (not removed by the MC, not kicked) keeps its
# registration and routes this long, so a new media connection with a fresh connection token
# re-attaches it (docs/protocol.md §13). Policy: after it, the participant is forgotten as if
# it had left (its room ends if it was the last); 0 forgets it at once.
MEDIA_GRACE_S: Final = 15.0
# Connection tokens one participant has used within their lifetime (a token opens one media
# connection only). Policy: a media CONNECT beyond it is refused with 409 until the oldest
# used token expires; a client that reconnects this often in a token's lifetime is broken.
MAX_USED_TOKENS_PER_PARTICIPANT: Final = 64
# Rooms per MH. Policy: the first RegisterParticipant of one more room gets CAPACITY_EXCEEDED.
MAX_ROOMS: Final = 1000
# A registration not followed by a media connection within this long is forgotten: its token
# lives CONNECTION_TOKEN_TTL_S, plus the verifier's default clock-skew leeway, plus a margin.
REGISTRATION_TTL_S: Final = CONNECTION_TOKEN_TTL_S + DEFAULT_LEEWAY_S + 5.0
# How often each room looks for expired registrations.
REGISTRATION_SWEEP_S: Final = 5.0
# Largest frame payload accepted from a publisher. Policy: the decoder resets the stream with
# STREAM_ERROR before buffering any of it (FramePayloadTooLarge). Keep it at most
# MAX_BUFFERED_BYTES_PER_PARTICIPANT, or the largest frame could never arrive.
MAX_FRAME_PAYLOAD: Final = 1024 * 1024
# Bytes read from a publisher's stream per receive; bounds the decoder's partial frame pieces
# held between two checkpoints.
RECEIVE_CHUNK: Final = 64 * 1024
# Bytes of queued frames a subscription writes in one send: frames popped for a write are
# committed (the drop policy no longer applies to them), so this bounds what escapes it.
SEND_BATCH_BYTES: Final = 64 * 1024
# A subscription writes no further than the subscriber's flow-control credit on its uni stream
# (_credit.py): what is beyond waits in its queue, under the drop policy and the age bound.
# Waiting, it looks at the credit after a pause doubling up to CREDIT_POLL_MAX_S (the transport
# signals no credit raise), not at every frame routed to it. Policy when the credit does not
# move while frames wait for three times the subscriber's last interval between two raises
# (at least CREDIT_STALL_S, at most CREDIT_STALL_MAX_S; half of that before its first raise):
# the stream is abandoned as a send the subscriber does not take (reset, counted against
# MAX_ABANDONED_SENDS); what its window held goes with it. A subscriber that reads, however
# slowly, keeps its stream and gets what it reads from a queue that drops the rest: a client
# raises its credit each time it has read half its window (128 KiB for ours), so one that reads
# 26 KB/s or more (its first 128 KiB within 5 s) keeps it. A video waiting for credit asks no
# key frame of its publisher until it can take one.
CREDIT_POLL_MAX_S: Final = 0.05
CREDIT_STALL_S: Final = 2.0
CREDIT_STALL_MAX_S: Final = 10.0
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
# Registration with the MC: the backoff between failed attempts (doubling up to the maximum).
# The heartbeat interval when the MC does not say is MH_HEARTBEAT_INTERVAL_S
# (darktower/protocol/heartbeats.py).
REGISTER_BACKOFF_S: Final = 0.5
REGISTER_BACKOFF_MAX_S: Final = 10.0
# Deadline of each call to the MC.
MC_CALL_DEADLINE_S: Final = 5.0

# Drain (docs/architecture.md §4.6): the share of --drain-grace-s kept for closing what is
# still connected once the wait for participants to move to another MH is over.
DRAIN_CLOSE_SHARE: Final = 0.2

# Media processing (docs/architecture.md §10): the MH's jobs on its media processors.
# Jobs (recordings, transcodes, mixes) this MH runs at once on all its processors together.
# Policy: one more is refused with CAPACITY_EXCEEDED, nothing is started.
MAX_PROCESSING_JOBS: Final = 256
# Deadline of each call to a processor (StartJob, UpdateJob, StopJob, RequestKeyFrame).
PROCESSOR_CALL_DEADLINE_S: Final = 5.0
# A processor whose call failed (unreachable, deadline) is tried after the others for this
# long; when every one has failed, they are all tried anyway (one may be back).
PROCESSOR_RETRY_S: Final = 5.0
# Key frame requests waiting for one processor. Policy when full: the request is dropped and
# counted; the subscriber's next frame asks again once the throttle allows it.
PROCESSOR_KEY_FRAME_QUEUE: Final = 64
# A job's hidden participant must open its media connection this long after StartJob
# succeeded; otherwise the job counts as lost (its processor died or cannot reach us).
JOB_CONNECT_S: Final = 20.0
# The end of a job (StopJob, then closing its participant) is shielded and bounded by this.
JOB_STOP_GRACE_S: Final = 5.0
# The age bound of a subscriber that asked for held sends (``send_delay_ms``, docs/protocol.md
# §7): it is not live (a media processor's recording), so a frame late by the live bounds is
# still worth sending; older than this it is dropped all the same (the queue stays bounded).
NOT_LIVE_MAX_AGE_S = 5.0

# Data messages (docs/protocol.md §18.4): what one participant's media session may send, in
# two token buckets per session, each holding DATA_BURST_S of its rate. Policy when either is
# empty: the datagram is dropped and counted as "rate" (nothing waits: datagrams are lossy).
# A datagram is at most 1,020 bytes, so the byte bucket bites only if the count's rate rises.
MAX_DATA_MESSAGES_PER_S: Final = 30
MAX_DATA_BYTES_PER_S: Final = 32 * 1024
DATA_BURST_S: Final = 1.0
# Copies of data messages one room relays (one per recipient of each datagram), in a token
# bucket per room holding DATA_BURST_S of it: each sender's rate is fanned out to every other
# member, so a room's copies grow with the square of its size (100 members at 30/s each ask
# 300,000 copies a second, a core's worth). Policy when the bucket has fewer tokens than a
# datagram has recipients: the datagram is dropped for all of them and counted as
# "room_rate" (no recipient gets a partial fan-out, nothing waits).
MAX_ROOM_DATA_COPIES_PER_S: Final = 20_000
