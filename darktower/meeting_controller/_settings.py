"""Settings of the Meeting Controller (``python -m darktower.meeting --help`` lists them)."""

from __future__ import annotations

import attrs

from darktower.config import option
from darktower.protocol.tokens import DEFAULT_ISSUER, DEFAULT_LEEWAY_S, MC_AUDIENCE
from darktower.transport import (
    IDLE_TIMEOUT_S,
    MAX_CONNECTIONS_PER_ADDRESS,
    QUIC_CORE,
    RETRY_THRESHOLD,
)

from ._limits import (
    EMPTY_MEETING_TIMEOUT_S,
    HANDSHAKE_TIMEOUT_S,
    MAX_MEETINGS,
    MAX_PARTICIPANTS,
    MIX_ABOVE_AUDIO_PUBLISHERS,
    OUTBOUND_QUEUE_SIZE,
    RESUME_GRACE_S,
)


@attrs.frozen
class Settings:
    host: str = option("127.0.0.1", "address to bind the WebTransport listener to")
    port: int = option(4433, "UDP port of the WebTransport signaling endpoint (0: any free port)")
    grpc_host: str = option(
        "127.0.0.1",
        "address to bind the MeetingControl gRPC listener (for the GC and MHs) to; also the "
        "address the GC is told, unless it is a wildcard (then PUBLIC_HOST)",
    )
    grpc_port: int = option(50052, "TCP port of the MeetingControl gRPC service (0: any)")
    ops_port: int = option(9102, "plain-HTTP port on 127.0.0.1 for /metrics, /healthz (0: any)")
    public_host: str = option(
        "", "host name put in signaling URLs and the GC endpoint (default: HOST)"
    )
    allowed_origins: str = option(
        "",
        "comma-separated browser origins allowed to connect (e.g. https://meet.example.com); empty: any",
    )
    certfile: str = option("", "TLS certificate (PEM); empty: a generated dev certificate")
    keyfile: str = option("", "TLS private key (PEM); empty: a generated dev key")
    gc_grpc: str = option("", "HOST:PORT of the Global Controller registry (empty: none)")
    cluster_ca: str = option(
        "", "cluster CA certificate (PEM) every internal gRPC peer is verified against; required"
    )
    cluster_cert: str = option(
        "", "this MC's cluster certificate (PEM, 'ca issue --role mc --id ID')"
    )
    cluster_key: str = option("", "the private key (PEM) of --cluster-cert")
    controller_id: str = option(
        "", "this MC's id when registering (default and only value: its certificate's id)"
    )
    region: str = option("local", "region reported to the GC")
    join_public_key_file: str = option(
        "",
        "PEM Ed25519 key verifying join tokens; when set, it is the only one (keys the GC "
        "sends are not taken); empty: the GC's keys",
    )
    token_issuer: str = option(DEFAULT_ISSUER, "expected issuer of join tokens")
    token_audience: str = option(
        MC_AUDIENCE, "expected audience of join tokens (the GC may override)"
    )
    token_leeway_s: float = option(
        DEFAULT_LEEWAY_S, "clock skew tolerated when verifying join tokens, seconds"
    )
    media_handler: str = option(
        "", "HOST:PORT of a static Media Handler's gRPC (besides registered ones)"
    )
    max_meetings: int = option(MAX_MEETINGS, "meetings this MC accepts")
    max_participants: int = option(MAX_PARTICIPANTS, "participants over all meetings")
    handshake_timeout_s: float = option(HANDSHAKE_TIMEOUT_S, "seconds to wait for the JoinRequest")
    idle_timeout_s: float = option(
        IDLE_TIMEOUT_S, "QUIC idle timeout: a vanished client leaves after it"
    )
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
    outbound_queue_size: int = option(
        OUTBOUND_QUEUE_SIZE, "signaling messages queued per participant before it is dropped"
    )
    empty_meeting_timeout_s: float = option(
        EMPTY_MEETING_TIMEOUT_S,
        "seconds a meeting with nobody in it lives (from its assignment, its last leave or "
        "join); 0: never",
    )
    resume_grace_s: float = option(
        RESUME_GRACE_S,
        "seconds a participant whose signaling connection is lost stays in its meeting, "
        "reconnecting, and may resume with its resume token; 0: it leaves at once",
    )
    mix_above_audio_publishers: int = option(
        MIX_ABOVE_AUDIO_PUBLISHERS,
        "in a meeting with more audio publishers than this, a subscriber of an audio stream "
        "gets its audio mix (everyone's audio but its own, one stream) instead; 0: never",
    )
    drain_grace_s: float = option(10.0, "on SIGTERM: seconds to end meetings before exit")
    log_level: str = option("info", "log level: debug, info, warning, error")
    log_json: bool = option(True, "log one JSON object per line (else text)")
