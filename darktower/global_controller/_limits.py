"""Every bound of the Global Controller, each with its policy (docs/architecture.md §5.2).

Settings default to these where an operator may tune them (``settings.py``). Kept beside
their code: the store's bounds (``store/_protocol.py`` MAX_LIST_ROWS, ``store/_worker.py``,
``store/_base.py`` DEFAULT_POOL_SIZE), the HTTP listeners' (``transport/_http_limits.py``),
the request rate limit (``protocol/ratelimit.py``; its buckets in the store, shared by
replicas: ``_rate_limit.py``), a meeting's moves (``_moves.py``) and the heartbeat timing
(``protocol/heartbeats.py``).
"""

from __future__ import annotations

from typing import Final

# -- requests -------------------------------------------------------------------------------
# Bodies larger than this are refused before parsing (HTTP 413, INVALID_REQUEST).
MAX_BODY_BYTES: Final = 16 * 1024
# Fields of a request body, in characters; longer is refused with INVALID_REQUEST naming the
# field (the store and the protobuf messages to MCs carry them whole).
MAX_DISPLAY_NAME: Final = 200
MAX_PARTICIPANT_NAME: Final = 100
MAX_CREDENTIAL_FIELD: Final = 256
MAX_REGION: Final = 64
# The largest ``max_participants`` a meeting may ask for (an MH room holds as many); more is
# refused with INVALID_REQUEST.
MAX_PARTICIPANTS_LIMIT: Final = 1000
# An end-to-end encrypted meeting's limit: each leave makes every sender share a new key with
# every participant left (N² key shares through the MC, docs/protocol.md §16.3), which the
# MC's per-participant message budget and outbox hold at this size, not at 1,000.
MAX_E2EE_PARTICIPANTS: Final = 200
# The longest ban a kick may ask for (``?ban=SECONDS``): a week. Longer: INVALID_REQUEST.
MAX_BAN_S: Final = 7 * 24 * 3600
# Path parameters longer than this cannot name anything (ids are UUIDs): 404 without a lookup.
MAX_ID_LENGTH: Final = 128
# /readyz reports the store unavailable when a trivial query takes longer than this.
READY_STORE_TIMEOUT_S: Final = 2.0

# -- recordings (docs/protocol.md §1.4) -------------------------------------------------------
# Entries of a meeting's recordings directory one listing or download looks at (a recording is
# its manifest and a file or a few): beyond, the listing says ``truncated`` and a download
# may not find its file (404). Bounds the time and memory of one request over the store.
MAX_RECORDING_ENTRIES: Final = 20_000
# A download is read from its file and handed to the transport this much at a time: the app
# holds one chunk per download, never the file.
RECORDING_CHUNK_BYTES: Final = 64 * 1024
# Reads of the recordings store (a directory, or a bucket through boto3, which blocks) run on
# at most this many worker threads at once; more wait for one. Each is given up after
# RECORDING_STORE_TIMEOUT_S: 503 (its thread, left to finish, still holds its place).
RECORDING_STORE_THREADS: Final = 8
RECORDING_STORE_TIMEOUT_S: Final = 30.0
# A 503 for a store that does not answer asks the client to retry after this long.
RECORDING_STORE_RETRY_AFTER_S: Final = 5
# A download still running after this long is cut (the client resumes with a Range request):
# no request holds its file and its task for ever.
RECORDING_DOWNLOAD_TIMEOUT_S: Final = 3600.0

# -- the controller registry (gRPC from MCs) -------------------------------------------------
# A controller id longer than this, or empty, is refused with INVALID_REQUEST.
MAX_CONTROLLER_ID_LENGTH: Final = 128
# An endpoint or signaling URL longer than this is refused with INVALID_REQUEST.
MAX_ENDPOINT_LENGTH: Final = 512
# A heartbeat listing more meetings than this is refused (INVALID_REQUEST): no MC holds that
# many, and the store updates one row per listed meeting.
MAX_MEETINGS_PER_HEARTBEAT: Final = 10_000

# -- quotas (docs/decisions.md, "GC quotas") -------------------------------------------------
# A client is an application, not a person: 100 meetings at once is far above a person's use
# and keeps one leaked credential from filling the controllers (1,000 meetings each). One
# more create is refused with RATE_LIMITED (429), checked atomically by the store.
MAX_ACTIVE_MEETINGS_PER_CLIENT: Final = 100
# A client over that cap is told to retry after this long: a meeting has to end first, and a
# client retrying blindly is kept to one attempt a minute.
ACTIVE_CAP_RETRY_AFTER_S: Final = 60.0
# Nobody joined, or everyone left, this long ago: the meeting ends and its slot is freed.
EMPTY_MEETING_TIMEOUT_S: Final = 600.0
# A kick with ``?ban=true`` keeps the kicked identity out of the meeting this long: longer
# than most meetings last.
KICK_BAN_S: Final = 3600.0
# A kick with ban revokes at most this many of the banned identity's other join tokens for
# the meeting at its MC, the newest (the MC takes no more per kick; docs/protocol.md). Older
# ones stay usable until they expire: the rate limit bounds how many one identity can hold.
MAX_REVOKED_TOKENS: Final = 100

# -- placement and calls to MCs --------------------------------------------------------------
# How many controllers one create request tries before answering 503: each refusal or
# unreachable MC costs up to one gRPC deadline, so a request stays bounded in time.
MAX_PLACEMENT_ATTEMPTS: Final = 3
# Deadline of each gRPC call to a Meeting Controller (then CAPACITY_EXCEEDED, 503).
MC_CALL_TIMEOUT_S: Final = 5.0
# A moderation waits at the MC up to its own deadline for the Media Handler to remove the
# streams it ends (the MC's MODERATION_DEADLINE_S, 3 calls of 5 s: docs/protocol.md §18.2,
# mirrored here, a test keeps them equal). The GC's call to ModerateParticipant waits that
# and MODERATION_CALL_SLACK_S more (the MC's own work, the reply's way back), so the owner
# gets the MC's answer, never a timeout of its own first.
MC_MODERATION_DEADLINE_S: Final = 15.0
MODERATION_CALL_SLACK_S: Final = 5.0
MODERATION_CALL_TIMEOUT_S: Final = MC_MODERATION_DEADLINE_S + MODERATION_CALL_SLACK_S
# The controller list is read from the store at most this often (monotonic seconds) per GC
# process; registrations and expiries made by this process invalidate it. Heartbeats and
# another replica's changes are seen within this delay.
CONTROLLER_CACHE_S: Final = 1.0

# A caller's word that the MC it used does not answer (``unreachable_controller``, docs/protocol.md
# §14) is checked by calling that MC (``_probes.py``): no answer within PROBE_TIMEOUT_S and it
# is lost now. A live MC answers in milliseconds; the caller (a join, or the client asking
# where its meeting is, bounded at 2 s) waits for the probe. One probe per controller at a
# time, its result shared by every request that waits for it and reused for PROBE_CACHE_S
# (monotonic seconds): a flood of such requests costs one call to that MC a second.
PROBE_TIMEOUT_S: Final = 1.0
# A probe that went unanswered but took longer than this was cut short by a pause of this GC
# (or of the whole machine), not by the MC's silence alone: it is made once more
# (docs/decisions.md, "A listener's own pause is not the other's silence").
PROBE_PAUSED_AFTER_S: Final = PROBE_TIMEOUT_S + 0.5
PROBE_CACHE_S: Final = 1.0
# A hint longer than this (a signaling URL, at most MAX_ENDPOINT_LENGTH, or a controller id)
# names no controller: INVALID_REQUEST.
MAX_HINT_LENGTH: Final = MAX_ENDPOINT_LENGTH

# -- access tokens ---------------------------------------------------------------------------
# Access tokens already verified, remembered (least recently used evicted when full) so a
# client's every request does not pay for signature checking again; an entry is used only
# until the token's expiry.
MAX_VERIFIED_TOKENS: Final = 10_000
# A removed client (``clients remove``, possibly run by another process or on another replica)
# loses its access tokens within this many seconds of the GC's clock: a client is read from
# the store again at most this often, whether it was found present or removed (so a removed
# client's still-valid tokens cost one read per this time, whatever the requests; at most
# MAX_VERIFIED_TOKENS clients remembered).
CLIENT_RECHECK_S: Final = 5.0

# -- housekeeping ----------------------------------------------------------------------------
# Telling MCs about the meetings housekeeping ended as empty: their controllers are told
# concurrently, at most this many at once, each one's meetings in turn; a controller that
# fails a call is not asked again this round; and the whole round of calls stops after
# END_EMPTY_NOTIFY_S. So a slow or unreachable MC delays the rest of housekeeping (controller
# expiry, purges, gauges) by at most that long. An MC not told ends the meeting itself (its
# own empty timer, docs/decisions.md "A kick can ban; GC quotas").
MAX_CONCURRENT_END_CALLS: Final = 8
END_EMPTY_NOTIFY_S: Final = 10.0

# -- calls to MCs -----------------------------------------------------------------------------
# Open gRPC channels kept, one per MC endpoint. Full: the least recently used one is closed (its
# next call reconnects), so a GC that has seen many MCs come and go holds a bounded number.
MAX_MC_CHANNELS: Final = 64

# -- operators -------------------------------------------------------------------------------
# ``clients add NAME``: a longer name is refused.
MAX_CLIENT_NAME_LENGTH: Final = 100
# On SIGTERM: requests in flight get this long, then everything left is cancelled.
DRAIN_GRACE_S: Final = 10.0
# gRPC handlers still running at shutdown get this long (shielded) once the drain is over.
RPC_STOP_GRACE_S: Final = 1.0
