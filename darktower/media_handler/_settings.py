"""Settings of the Media Handler (``python -m darktower.media --help`` lists them)."""

from __future__ import annotations

import attrs

from darktower.config import option
from darktower.protocol.tokens import DEFAULT_LEEWAY_S
from darktower.transport import (
    MAX_CONNECTIONS_PER_ADDRESS,
    QUIC_CORE,
    RETRY_THRESHOLD,
)

from ._limits import (
    DEFAULT_BUDGET_IN_BYTES_PER_S,
    DEFAULT_BUDGET_OUT_BYTES_PER_S,
    MAX_AUDIO_AGE_S,
    MAX_BUFFERED_BYTES_PER_PARTICIPANT,
    MAX_FRAME_PAYLOAD,
    MAX_PARTICIPANTS_PER_ROOM,
    MAX_ROOMS,
    MAX_STREAMS_PER_PARTICIPANT,
    MAX_VIDEO_AGE_S,
    MEDIA_GRACE_S,
    REGISTRATION_TTL_S,
    TELEMETRY_INTERVAL_S,
)
from ._queue import DEFAULT_MAX_BYTES, DEFAULT_MAX_FRAMES


@attrs.frozen
class Settings:
    host: str = option("127.0.0.1", "address to bind the WebTransport listener to")
    port: int = option(4434, "UDP port of the WebTransport media endpoint (0: any free port)")
    grpc_host: str = option(
        "127.0.0.1",
        "address to bind the MediaControl gRPC listener (for the MC) to; also the address the "
        "MC is told, unless it is a wildcard (then PUBLIC_HOST)",
    )
    grpc_port: int = option(50053, "TCP port of the MediaControl gRPC service (0: any)")
    ops_port: int = option(9103, "plain-HTTP port on 127.0.0.1 for /metrics, /healthz (0: any)")
    public_host: str = option("", "host name put in media URLs handed to clients (default: HOST)")
    allowed_origins: str = option(
        "",
        "comma-separated browser origins allowed to connect (e.g. https://meet.example.com); empty: any",
    )
    certfile: str = option("", "TLS certificate (PEM); empty: a generated dev certificate")
    keyfile: str = option("", "TLS private key (PEM); empty: a generated dev key")
    quic_retry_threshold: int = option(
        RETRY_THRESHOLD,
        "QUIC handshakes in progress beyond which new clients get a stateless Retry (0: always)",
    )
    max_connections_per_address: int = option(
        MAX_CONNECTIONS_PER_ADDRESS, "QUIC connections per client address (IPv6: per /64)"
    )
    quic_core: str = option(
        QUIC_CORE,
        "QUIC library of the WebTransport endpoint: aioquic, qh3 (pip install darktower[qh3]) "
        "or auto (qh3 when installed)",
    )
    mc_grpc: str = option("", "HOST:PORT of the Meeting Controller to register with (empty: none)")
    processors: str = option(
        "",
        "comma-separated HOST:PORT of media processors (MediaProcessing gRPC, role mp) for "
        "recordings, transcodes and mixes (empty: none; such requests are CAPACITY_EXCEEDED)",
    )
    cluster_ca: str = option(
        "", "cluster CA certificate (PEM) every internal gRPC peer is verified against; required"
    )
    cluster_cert: str = option(
        "", "this MH's cluster certificate (PEM, 'ca issue --role mh --id ID')"
    )
    cluster_key: str = option("", "the private key (PEM) of --cluster-cert")
    handler_id: str = option(
        "", "this MH's id when registering (default and only value: its certificate's id)"
    )
    max_rooms: int = option(MAX_ROOMS, "rooms (meetings) on this MH")
    max_participants_per_room: int = option(MAX_PARTICIPANTS_PER_ROOM, "participants per room")
    max_streams_per_participant: int = option(
        MAX_STREAMS_PER_PARTICIPANT, "registered streams (simulcast layers each) per participant"
    )
    budget_in_bytes_per_s: int = option(
        DEFAULT_BUDGET_IN_BYTES_PER_S, "byte-rate budget of what one participant publishes"
    )
    budget_out_bytes_per_s: int = option(
        DEFAULT_BUDGET_OUT_BYTES_PER_S, "byte-rate budget of what one participant is sent"
    )
    queue_max_frames: int = option(DEFAULT_MAX_FRAMES, "frames queued per subscription")
    queue_max_bytes: int = option(DEFAULT_MAX_BYTES, "bytes queued per subscription")
    max_frame_payload: int = option(MAX_FRAME_PAYLOAD, "largest frame payload accepted, bytes")
    max_buffered_bytes_per_participant: int = option(
        MAX_BUFFERED_BYTES_PER_PARTICIPANT,
        "bytes of partial frames one participant's publish streams may hold together",
    )
    registration_ttl_s: float = option(
        REGISTRATION_TTL_S,
        "seconds a registration waits for its media connection (keep it above the connection "
        "token's 60 s plus --token-leeway-s: a late connection is refused after it)",
    )
    media_grace_s: float = option(
        MEDIA_GRACE_S,
        "seconds a participant whose media connection was lost keeps its routes, for a new "
        "media connection with a fresh token to re-attach it (0: forget it at once)",
    )
    max_video_age_s: float = option(
        MAX_VIDEO_AGE_S, "seconds a video frame may wait for its subscriber before it is stale"
    )
    max_audio_age_s: float = option(
        MAX_AUDIO_AGE_S, "seconds an audio frame may wait for its subscriber before it is stale"
    )
    telemetry_interval_s: float = option(TELEMETRY_INTERVAL_S, "seconds between stream reports")
    last_n: int = option(
        0,
        "LastN: in rooms of more than --last-n-room-size members, each participant receives "
        "camera video only from this many recent speakers and those it pinned (0: off)",
    )
    last_n_room_size: int = option(
        16, "LastN applies in rooms of more than this many members (see --last-n)"
    )
    token_leeway_s: float = option(
        DEFAULT_LEEWAY_S, "clock skew tolerated when verifying connection tokens, seconds"
    )
    drain_grace_s: float = option(10.0, "on SIGTERM: seconds to end rooms before exit")
    log_level: str = option("info", "log level: debug, info, warning, error")
    log_json: bool = option(True, "log one JSON object per line (else text)")
