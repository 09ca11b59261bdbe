"""Hypothesis strategies for signaling envelopes and helpers that feed the stream codec
(docs/protocol.md §2), shared by the framing tests."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import pytest
from google.protobuf.message import Message
from hypothesis import strategies as st

from darktower.errors import InvalidRequest
from darktower.protocol import ClientMessage, MessageDecoder, ServerMessage, encode_message, pb

common, signaling = pb.common_pb2, pb.signaling_pb2


# --- strategies --------------------------------------------------------------------------------
uint32s = st.integers(0, 2**32 - 1)
uint64s = st.integers(0, 2**64 - 1)
texts = st.text(max_size=20)
blobs = st.binary(max_size=64)
floats32 = st.floats(width=32, allow_nan=False)
stream_types = st.sampled_from(list(common.StreamType.values()))
leave_reasons = st.sampled_from(list(common.LeaveReason.values()))

simulcast_layers = st.builds(
    common.SimulcastLayer, layer_id=texts, width=uint32s, height=uint32s, max_bitrate=uint32s
)
metadata = st.builds(
    common.StreamMetadata,
    codec=texts,
    max_bitrate=uint32s,
    video=st.builds(
        common.VideoMetadata,
        width=uint32s,
        height=uint32s,
        framerate=uint32s,
        simulcast_layers=st.lists(simulcast_layers, max_size=3),
    ),
)
media_streams = st.builds(
    common.MediaStream, stream_id=texts, stream_type=stream_types, metadata=metadata
)
participants = st.builds(
    signaling.Participant,
    participant_id=texts,
    name=texts,
    streams=st.lists(media_streams, max_size=2),
    joined_at=uint64s,
    public_key=blobs,
    key_id=texts,
)
key_shares = st.builds(
    signaling.E2EEKeyShare,
    from_participant_id=texts,
    to_participant_id=texts,
    key_id=texts,
    ciphertext=blobs,
)
quality = st.builds(
    signaling.StreamQualityUpdate,
    stream_id=texts,
    available_bitrate=uint32s,
    packet_loss=floats32,
    rtt_ms=uint32s,
)


def _envelope(
    cls: type[Message], field: str, inner: st.SearchStrategy[Message]
) -> st.SearchStrategy[Message]:
    return st.builds(lambda rid, m: cls(request_id=rid, **{field: m}), uint64s, inner)


client_messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(ClientMessage, request_id=uint64s),  # no message set: still a valid envelope
    _envelope(
        ClientMessage,
        "join",
        st.builds(
            signaling.JoinRequest,
            meeting_id=texts,
            join_token=texts,
            participant_name=texts,
            capabilities=st.builds(
                signaling.ParticipantCapabilities,
                video_codecs=st.lists(texts, max_size=3),
                audio_codecs=st.lists(texts, max_size=3),
                supports_simulcast=st.booleans(),
                max_video_streams=uint32s,
            ),
            e2ee_public_key=blobs,
        ),
    ),
    _envelope(
        ClientMessage,
        "publish",
        st.builds(
            signaling.PublishStream, stream_id=texts, stream_type=stream_types, metadata=metadata
        ),
    ),
    _envelope(
        ClientMessage,
        "subscribe",
        st.builds(
            signaling.SubscribeStream,
            stream_id=texts,
            options=st.builds(
                signaling.SubscriptionOptions, preferred_layer=texts, max_bitrate=uint32s
            ),
        ),
    ),
    _envelope(
        ClientMessage, "unsubscribe", st.builds(signaling.UnsubscribeStream, stream_id=texts)
    ),
    _envelope(ClientMessage, "unpublish", st.builds(signaling.UnpublishStream, stream_id=texts)),
    _envelope(ClientMessage, "quality", quality),
    _envelope(ClientMessage, "leave", st.builds(signaling.LeaveRequest)),
    _envelope(ClientMessage, "kick", st.builds(signaling.KickParticipant, participant_id=texts)),
    _envelope(ClientMessage, "end_meeting", st.builds(signaling.EndMeeting)),
    _envelope(ClientMessage, "ping", st.builds(signaling.Ping, timestamp=uint64s)),
    _envelope(ClientMessage, "key_share", key_shares),
)

server_messages: st.SearchStrategy[Message] = st.one_of(
    _envelope(
        ServerMessage,
        "join_response",
        st.builds(
            signaling.JoinResponse,
            participant_id=texts,
            existing_participants=st.lists(participants, max_size=3),
            media_server=st.builds(
                signaling.MediaServerInfo, media_handler_url=texts, connection_token=texts
            ),
            encryption_keys=st.builds(signaling.EncryptionKeys, public_key=blobs, key_id=texts),
        ),
    ),
    _envelope(
        ServerMessage,
        "participant_joined",
        st.builds(signaling.ParticipantJoined, participant=participants),
    ),
    _envelope(
        ServerMessage,
        "participant_left",
        st.builds(signaling.ParticipantLeft, participant_id=texts, reason=leave_reasons),
    ),
    _envelope(
        ServerMessage,
        "stream_published",
        st.builds(signaling.StreamPublished, participant_id=texts, stream=media_streams),
    ),
    _envelope(
        ServerMessage,
        "stream_unpublished",
        st.builds(signaling.StreamUnpublished, participant_id=texts, stream_id=texts),
    ),
    _envelope(ServerMessage, "ack", st.builds(signaling.Ack, stream_id=texts)),
    _envelope(ServerMessage, "quality", quality),
    _envelope(
        ServerMessage, "key_frame_request", st.builds(common.KeyFrameRequest, stream_id=texts)
    ),
    _envelope(ServerMessage, "pong", st.builds(signaling.Pong, timestamp=uint64s)),
    _envelope(
        ServerMessage,
        "error",
        st.builds(
            common.ErrorMessage,
            code=st.sampled_from(list(common.ErrorCode.values())),
            message=texts,
            details=st.dictionaries(texts, texts, max_size=3),
        ),
    ),
    _envelope(ServerMessage, "key_share", key_shares),
    _envelope(
        ServerMessage,
        "session_ended",
        st.builds(signaling.SessionEnded, reason=leave_reasons, message=texts),
    ),
)


# --- helpers -----------------------------------------------------------------------------------
def feed_chunks(decoder: MessageDecoder[Message], chunks: Iterable[bytes]) -> list[Message]:
    """The single-reader pattern: feed a chunk, drain, repeat."""
    out: list[Message] = []
    for chunk in chunks:
        decoder.receive_data(chunk)
        out.extend(decoder)
    return out


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def wire_of(messages: Sequence[Message]) -> bytes:
    return b"".join(encode_message(m) for m in messages)


def same_messages(a: Sequence[Message], b: Sequence[Message]) -> bool:
    return [m.SerializeToString(deterministic=True) for m in a] == [
        m.SerializeToString(deterministic=True) for m in b
    ]


def reason_of(excinfo: pytest.ExceptionInfo[InvalidRequest]) -> str:
    return excinfo.value.details["reason"]
