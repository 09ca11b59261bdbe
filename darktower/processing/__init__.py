"""Media processing: work on encoded media away from the SFU (docs/architecture.md §10).

Recording muxes a participant's streams, as sent, into Matroska/WebM files
(:class:`ParticipantRecorder`); a :class:`Transcoder` re-encodes a video stream; a
:class:`Mixer` mixes Opus sources into one stream per listener without its own (mix-minus);
:func:`capabilities` says which codecs this build of FFmpeg encodes and decodes; the
recordings store is a directory (:class:`RecordingStore`) or an S3-compatible bucket
(:class:`S3Store`). Nothing here is asynchronous; only the bucket touches the network (boto3,
loaded when one is made): the jobs and services that use it run it away from the event
loop's thread.
"""

from ._codecs import (
    AUDIO_CODECS,
    CODECS,
    VIDEO_CODECS,
    Capabilities,
    Codec,
    capabilities,
    decoder_name,
    encoder_name,
    normalize_codec,
)
from ._mixer import MixCounters, Mixer
from ._recorder import (
    DROP_BEFORE_KEY_FRAME,
    DROP_INVALID,
    DROP_UNKNOWN_STREAM,
    MediaKind,
    ParticipantRecorder,
    RecordingSummary,
)
from ._s3 import S3Store, open_bucket
from ._segment import CLUSTER_MS, RecordedFile, RecordingError
from ._store import (
    ByteReader,
    RecordingReader,
    RecordingStore,
    StoredFile,
    StoredRecordings,
    StoreUnavailable,
    manifest,
    safe_name,
)
from ._transcode import (
    EncodedFrame,
    TranscodeCounters,
    TranscodeError,
    Transcoder,
    UnknownCodec,
    decodable_codecs,
    encodable_codecs,
)

__all__ = [
    "AUDIO_CODECS",
    "CLUSTER_MS",
    "CODECS",
    "DROP_BEFORE_KEY_FRAME",
    "DROP_INVALID",
    "DROP_UNKNOWN_STREAM",
    "VIDEO_CODECS",
    "ByteReader",
    "Capabilities",
    "Codec",
    "EncodedFrame",
    "MediaKind",
    "MixCounters",
    "Mixer",
    "ParticipantRecorder",
    "RecordedFile",
    "RecordingError",
    "RecordingReader",
    "RecordingStore",
    "RecordingSummary",
    "S3Store",
    "StoreUnavailable",
    "StoredFile",
    "StoredRecordings",
    "TranscodeCounters",
    "TranscodeError",
    "Transcoder",
    "UnknownCodec",
    "capabilities",
    "decodable_codecs",
    "decoder_name",
    "encodable_codecs",
    "encoder_name",
    "manifest",
    "normalize_codec",
    "open_bucket",
    "safe_name",
]
