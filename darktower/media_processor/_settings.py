"""Settings of the media processor (``python -m darktower.processor --help`` lists them)."""

from __future__ import annotations

import attrs

from darktower.config import option

from ._limits import DRAIN_GRACE_S, MAX_MIXES, MAX_RECORDINGS, MAX_TRANSCODES


@attrs.frozen
class Settings:
    grpc_host: str = option("127.0.0.1", "address to bind the MediaProcessing gRPC listener to")
    grpc_port: int = option(50054, "TCP port of the MediaProcessing gRPC service (0: any)")
    ops_port: int = option(9104, "plain-HTTP port on 127.0.0.1 for /metrics, /healthz (0: any)")
    cluster_ca: str = option(
        "", "cluster CA certificate (PEM) every internal gRPC peer is verified against; required"
    )
    cluster_cert: str = option(
        "", "this processor's cluster certificate (PEM, 'ca issue --role mp --id ID')"
    )
    cluster_key: str = option("", "the private key (PEM) of --cluster-cert")
    processor_id: str = option(
        "", "this processor's id (default and only value: its certificate's)"
    )
    recordings_dir: str = option(
        "recordings", "directory recordings are written to (one directory per meeting)"
    )
    recordings_s3_endpoint: str = option(
        "",
        "URL of an S3-compatible endpoint to upload each recording to when it ends (written "
        "to --recordings-dir meanwhile); empty: the directory only. Credentials: boto3's chain "
        "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance role)",
    )
    recordings_s3_bucket: str = option("", "the recordings bucket (with the S3 endpoint)")
    recordings_s3_prefix: str = option(
        "", "prefix of the recordings' object keys: PREFIX<meeting_id>/<file name>"
    )
    recordings_s3_keep_local: bool = option(
        False, "with the S3 endpoint: keep each recording in --recordings-dir once uploaded"
    )
    max_recordings: int = option(MAX_RECORDINGS, "recordings run at once")
    max_transcodes: int = option(MAX_TRANSCODES, "transcodes run at once")
    max_mixes: int = option(MAX_MIXES, "audio mixes run at once")
    drain_grace_s: float = option(DRAIN_GRACE_S, "seconds a drain gives the jobs to finish")
    log_level: str = option("info", "debug, info, warning or error")
