"""Settings of the Global Controller (``python -m darktower.global --help`` lists them)."""

from __future__ import annotations

import pathlib

import attrs

from darktower.config import option
from darktower.global_controller._limits import (
    DRAIN_GRACE_S,
    EMPTY_MEETING_TIMEOUT_S,
    KICK_BAN_S,
    MAX_ACTIVE_MEETINGS_PER_CLIENT,
    MC_CALL_TIMEOUT_S,
)
from darktower.protocol.heartbeats import HEARTBEAT_MISSES, MC_HEARTBEAT_INTERVAL_S
from darktower.protocol.ratelimit import GC_REQUESTS_PER_MIN
from darktower.protocol.tokens import DEFAULT_LEEWAY_S, JOIN_TOKEN_TTL_S, MC_AUDIENCE
from darktower.transport.http_server import (
    QUIC_RETRY_THRESHOLD,
    READ_TIMEOUT_S,
    TCP_MAX_CONNECTIONS_PER_ADDRESS,
    TLS_HANDSHAKE_TIMEOUT_S,
)


@attrs.frozen
class Settings:
    host: str = option("127.0.0.1", "address to bind the HTTPS/HTTP3 listener to")
    port: int = option(8443, "HTTPS port: TCP (HTTP/1.1, HTTP/2) and UDP (HTTP/3); 0 = any")
    grpc_host: str = option(
        "127.0.0.1", "address to bind the gRPC listener (controller registry, for MCs) to"
    )
    grpc_port: int = option(50051, "gRPC port of the controller registry; 0 = any")
    cluster_ca: str = option(
        "", "cluster CA certificate (PEM) every internal gRPC peer is verified against; required"
    )
    cluster_cert: str = option(
        "", "the GC's cluster certificate (PEM, 'python -m darktower.global ca issue --role gc')"
    )
    cluster_key: str = option("", "the private key (PEM) of --cluster-cert")
    public_url: str = option("", "base URL clients use to reach this GC; empty: https://HOST:PORT")
    data_dir: str = option("./data", "directory for the SQLite file, keys and dev certificate")
    database: str = option(
        "", "store: sqlite:///PATH, a path or postgresql://...; empty: DATA_DIR/gc.db"
    )
    recordings_dir: str = option(
        "recordings",
        "directory the media processors write recordings to (one directory per meeting); "
        "the GC lists and serves them from here",
    )
    recordings_s3_endpoint: str = option(
        "",
        "URL of an S3-compatible endpoint whose bucket holds the recordings (the processors "
        "upload them there); empty: the recordings directory. Credentials: boto3's chain "
        "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance role)",
    )
    recordings_s3_bucket: str = option("", "the recordings bucket (with the S3 endpoint)")
    recordings_s3_prefix: str = option(
        "", "prefix of the recordings' object keys: PREFIX<meeting_id>/<file name>"
    )
    certfile: str = option("", "TLS certificate (PEM); empty: a dev certificate in DATA_DIR")
    keyfile: str = option("", "TLS private key (PEM); empty: the dev certificate's key")
    join_key_file: str = option(
        "", "Ed25519 private key (PEM) signing join tokens; empty: DATA_DIR/join-key.pem"
    )
    access_key_file: str = option(
        "", "Ed25519 private key (PEM) signing access tokens; empty: DATA_DIR/access-key.pem"
    )
    token_audience: str = option(MC_AUDIENCE, "audience of the join tokens MCs verify")
    region: str = option("", "region assumed for requests that name none (empty: any)")
    join_token_ttl_s: int = option(JOIN_TOKEN_TTL_S, "lifetime of join tokens, seconds")
    join_key_overlap_s: float = option(
        2 * JOIN_TOKEN_TTL_S,
        "after a join-key rotation, seconds the previous key still verifies (>= join token TTL)",
    )
    token_leeway_s: float = option(
        DEFAULT_LEEWAY_S, "clock skew tolerated when verifying access tokens, seconds"
    )
    rate_limit_per_min: int = option(
        GC_REQUESTS_PER_MIN, "requests per minute per client id (or address)"
    )
    heartbeat_interval_s: float = option(
        MC_HEARTBEAT_INTERVAL_S, "heartbeat interval asked of meeting controllers"
    )
    heartbeat_misses: int = option(
        HEARTBEAT_MISSES, "missed heartbeats after which a controller is unhealthy"
    )
    mc_call_timeout_s: float = option(
        MC_CALL_TIMEOUT_S, "deadline of each gRPC call to a meeting controller"
    )
    max_active_meetings_per_client: int = option(
        MAX_ACTIVE_MEETINGS_PER_CLIENT,
        "meetings one API client may have active at once; more are refused (429); 0: no cap",
    )
    empty_meeting_timeout_s: float = option(
        EMPTY_MEETING_TIMEOUT_S,
        "a meeting with nobody in it for this long is ended (end_reason: empty); 0: never, "
        "as at the MC",
    )
    kick_ban_s: float = option(
        KICK_BAN_S, "how long a kick with ?ban=true keeps that identity out of the meeting"
    )
    webhook_retry_base_s: float = option(
        1.0,
        "webhooks: a failed delivery is tried again after this, doubled after each failure "
        "(at most 300 s between tries)",
    )
    webhook_max_attempts: int = option(
        10, "webhooks: tries of a delivery before it is recorded failed"
    )
    webhooks_allow_private: bool = option(
        False,
        "webhooks: also deliver to loopback, private and link-local addresses (development)",
    )
    dev_http_port: int = option(
        -1, "development: also serve plain HTTP on 127.0.0.1 at this port (-1 off, 0 any)"
    )
    dev_credentials_file: str = option(
        "", "development: JSON {client_id, client_secret} handed to the browser page"
    )
    drain_grace_s: float = option(
        DRAIN_GRACE_S, "on SIGTERM: seconds to finish requests before exit"
    )
    http_max_connections_per_address: int = option(
        TCP_MAX_CONNECTIONS_PER_ADDRESS,
        "HTTPS listener: connections per address (IPv6: per /64), TCP and QUIC each",
    )
    quic_retry_threshold: int = option(
        QUIC_RETRY_THRESHOLD,
        "HTTP/3: QUIC handshakes in progress beyond which new clients get a Retry (0: always)",
    )
    tls_handshake_timeout_s: float = option(
        TLS_HANDSHAKE_TIMEOUT_S, "HTTPS over TCP: seconds a client has to finish its TLS handshake"
    )
    http_read_timeout_s: float = option(
        READ_TIMEOUT_S, "HTTPS over TCP: a connection silent this long mid-request is closed"
    )
    log_level: str = option("info", "log level: debug, info, warning, error")
    log_json: bool = option(True, "log one JSON object per line (else text)")

    @property
    def heartbeat_timeout_s(self) -> float:
        return self.heartbeat_interval_s * self.heartbeat_misses

    @property
    def data_path(self) -> pathlib.Path:
        return pathlib.Path(self.data_dir)

    @property
    def store_url(self) -> str:
        return self.database or str(self.data_path / "gc.db")
