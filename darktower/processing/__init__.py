"""Media processing: work on encoded media away from the SFU (docs/architecture.md §10).

Recording muxes a participant's streams, as sent, into Matroska/WebM files
(:class:`ParticipantRecorder`); :func:`capabilities` says which codecs this build of FFmpeg
encodes and decodes. Nothing here is asynchronous or touches the network: the jobs that use it
run it away from the event loop's thread.
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
from ._recorder import (
    DROP_BEFORE_KEY_FRAME,
    DROP_INVALID,
    DROP_UNKNOWN_STREAM,
    MediaKind,
    ParticipantRecorder,
    RecordingSummary,
)
from ._segment import CLUSTER_MS, RecordedFile, RecordingError

__all__ = [
    "AUDIO_CODECS",
    "CLUSTER_MS",
    "CODECS",
    "DROP_BEFORE_KEY_FRAME",
    "DROP_INVALID",
    "DROP_UNKNOWN_STREAM",
    "VIDEO_CODECS",
    "Capabilities",
    "Codec",
    "MediaKind",
    "ParticipantRecorder",
    "RecordedFile",
    "RecordingError",
    "RecordingSummary",
    "capabilities",
    "decoder_name",
    "encoder_name",
    "normalize_codec",
]
