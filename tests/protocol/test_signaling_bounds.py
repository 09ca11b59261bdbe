"""The signaling bounds (darktower.protocol._bounds, docs/protocol.md "Signaling limits"):
every client field is bounded, the first one over is named, bounded input always fits what the
MC builds from it, and the decoder with the bounds check never fails any other way (fuzz)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from darktower.errors import InvalidRequest
from darktower.meeting_controller import MAX_PUBLISHED_STREAMS
from darktower.meeting_controller._batches import MESSAGE_BUDGET, join_messages
from darktower.protocol import (
    CLIENT_FIELD_BOUNDS,
    MAX_MESSAGE_SIZE,
    REASON_BAD_VALUE,
    REASON_FIELD_TOO_LARGE,
    MessageDecoder,
    check_bounds,
    encode_message,
    encode_varint,
    unbounded_fields,
)
from darktower.protocol import _bounds as b
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from tests._fuzz import fuzz_settings

WIDE = "\U0001d11e"  # four bytes in UTF-8


def test_every_client_field_is_bounded() -> None:
    assert unbounded_fields(sig.ClientMessage.DESCRIPTOR, CLIENT_FIELD_BOUNDS) == []
    # and the table names no field that does not exist
    names = {f for f in CLIENT_FIELD_BOUNDS}
    known: set[str] = set()

    def walk(d: object) -> None:
        for field in d.fields:  # type: ignore[attr-defined]
            if field.full_name not in known:
                known.add(field.full_name)
                if field.message_type is not None:
                    walk(field.message_type)

    walk(sig.ClientMessage.DESCRIPTOR)
    assert names <= known


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (
            sig.ClientMessage(join=sig.JoinRequest(participant_name="n" * 257)),
            "join.participant_name",
        ),
        (
            sig.ClientMessage(join=sig.JoinRequest(e2ee_public_key=b"k" * 33)),
            "join.e2ee_public_key",
        ),
        (sig.ClientMessage(join=sig.JoinRequest(join_token="t" * 4097)), "join.join_token"),
        (
            sig.ClientMessage(
                join=sig.JoinRequest(
                    capabilities=sig.ParticipantCapabilities(video_codecs=["VP8"] * 17)
                )
            ),
            "join.capabilities.video_codecs",
        ),
        (
            sig.ClientMessage(
                publish=sig.PublishStream(
                    metadata=common_pb2.StreamMetadata(
                        video=common_pb2.VideoMetadata(
                            simulcast_layers=[
                                common_pb2.SimulcastLayer(layer_id="a"),
                                common_pb2.SimulcastLayer(layer_id="b" * 65),
                            ]
                        )
                    )
                )
            ),
            "publish.metadata.video.simulcast_layers[1].layer_id",
        ),
        (sig.ClientMessage(publish=sig.PublishStream(stream_id="s" * 129)), "publish.stream_id"),
        (
            sig.ClientMessage(key_share=sig.E2EEKeyShare(ciphertext=b"c" * 1025)),
            "key_share.ciphertext",
        ),
        (
            sig.ClientMessage(
                subscribe=sig.SubscribeStream(
                    options=sig.SubscriptionOptions(preferred_layer="p" * 65)
                )
            ),
            "subscribe.options.preferred_layer",
        ),
        (
            sig.ClientMessage(kick=sig.KickParticipant(participant_id="p" * 129)),
            "kick.participant_id",
        ),
    ],
)
def test_the_first_field_over_its_bound_is_named(message: sig.ClientMessage, field: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_bounds(message)
    assert refused.value.details["field"] == field
    assert refused.value.details["reason"] == REASON_FIELD_TOO_LARGE
    assert field in str(refused.value)


def test_strings_count_characters_and_undefined_enums_are_refused() -> None:
    check_bounds(sig.ClientMessage(join=sig.JoinRequest(participant_name=WIDE * 256)))
    bad = sig.ClientMessage(publish=sig.PublishStream(stream_id="s"))
    bad.publish.stream_type = 7  # type: ignore[assignment]
    with pytest.raises(InvalidRequest) as refused:
        check_bounds(bad)
    assert refused.value.details == {"reason": REASON_BAD_VALUE, "field": "publish.stream_type"}


def _largest_stream(n: int) -> common_pb2.MediaStream:
    layers = [
        common_pb2.SimulcastLayer(
            layer_id=WIDE * b.MAX_LAYER_ID_CHARS,
            width=2**32 - 1,
            height=2**32 - 1,
            max_bitrate=2**32 - 1,
        )
        for _ in range(b.MAX_SIMULCAST_LAYERS)
    ]
    stream = common_pb2.MediaStream(
        stream_id=(str(n) + WIDE * b.MAX_ID_CHARS)[: b.MAX_ID_CHARS],
        stream_type=common_pb2.VIDEO_SCREEN,
        metadata=common_pb2.StreamMetadata(
            codec=WIDE * b.MAX_CODEC_CHARS,
            max_bitrate=2**32 - 1,
            video=common_pb2.VideoMetadata(
                width=2**32 - 1, height=2**32 - 1, framerate=2**32 - 1, simulcast_layers=layers
            ),
        ),
    )
    check_bounds(
        sig.ClientMessage(
            publish=sig.PublishStream(stream_id=stream.stream_id, metadata=stream.metadata)
        )
    )
    return stream


def _largest_participant() -> sig.Participant:
    return sig.Participant(
        participant_id=WIDE * b.MAX_ID_CHARS,
        name=WIDE * b.MAX_NAME_CHARS,
        streams=[_largest_stream(n) for n in range(MAX_PUBLISHED_STREAMS)],
        joined_at=2**64 - 1,
        public_key=b"k" * b.MAX_E2EE_PUBLIC_KEY_BYTES,
        key_id=WIDE * b.MAX_KEY_ID_CHARS,
    )


def test_what_the_mc_builds_from_bounded_input_always_fits() -> None:
    largest = _largest_participant()
    joined = sig.ServerMessage(participant_joined=sig.ParticipantJoined(participant=largest))
    assert len(encode_message(joined)) <= MAX_MESSAGE_SIZE  # encodes: never dropped
    published = sig.ServerMessage(
        request_id=2**64 - 1,
        stream_published=sig.StreamPublished(
            participant_id=largest.participant_id, stream=largest.streams[0]
        ),
    )
    encode_message(published)
    share = sig.ServerMessage(
        key_share=sig.E2EEKeyShare(
            from_participant_id=WIDE * b.MAX_ID_CHARS,
            to_participant_id=WIDE * b.MAX_ID_CHARS,
            key_id=WIDE * b.MAX_KEY_ID_CHARS,
            ciphertext=b"c" * b.MAX_KEY_SHARE_CIPHERTEXT_BYTES,
        )
    )
    encode_message(share)
    # a JoinResponse of ten such participants is split, every message within the limit
    response = sig.JoinResponse(
        participant_id="p" * 36,
        media_server=sig.MediaServerInfo(media_handler_url="u" * 200, connection_token="t" * 400),
    )
    messages = join_messages(2**64 - 1, response, [largest] * 10)
    assert len(messages) > 2
    assert all(m.ByteSize() <= MESSAGE_BUDGET for m in messages)
    assert all(len(encode_message(m)) <= MAX_MESSAGE_SIZE + 3 for m in messages)
    assert messages[0].join_response.participant_batches == len(messages) - 1
    assert (
        sum(len(m.participants_batch.participants) for m in messages[1:])
        + len(messages[0].join_response.existing_participants)
        == 10
    )


def test_a_short_list_needs_no_batch() -> None:
    (only,) = join_messages(1, sig.JoinResponse(participant_id="p"), [sig.Participant(name="a")])
    assert only.join_response.participant_batches == 0
    assert [p.name for p in only.join_response.existing_participants] == ["a"]


def test_the_decoder_drops_unknown_fields() -> None:
    body = sig.ClientMessage(ping=sig.Ping(timestamp=1)).SerializeToString()
    body += b"\x9a\x06\x03abc"  # field 99, 3 bytes
    decoder: MessageDecoder[sig.ClientMessage] = MessageDecoder(sig.ClientMessage)
    decoder.receive_data(encode_varint(len(body)) + body)
    message = decoder.next_message()
    assert message is not None and message.ByteSize() == len(body) - 6


# --- fuzz --------------------------------------------------------------------------------------
def _valid_message() -> st.SearchStrategy[sig.ClientMessage]:
    ids = st.text(max_size=40)
    return st.one_of(
        st.builds(
            lambda t: sig.ClientMessage(ping=sig.Ping(timestamp=t)), st.integers(0, 2**64 - 1)
        ),
        st.builds(
            lambda s, c: sig.ClientMessage(
                publish=sig.PublishStream(stream_id=s, metadata=common_pb2.StreamMetadata(codec=c))
            ),
            ids,
            st.text(max_size=80),
        ),
        st.builds(
            lambda to, c: sig.ClientMessage(
                key_share=sig.E2EEKeyShare(to_participant_id=to, ciphertext=c)
            ),
            ids,
            st.binary(max_size=1200),
        ),
        st.builds(lambda p: sig.ClientMessage(kick=sig.KickParticipant(participant_id=p)), ids),
    )


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, value in edits:
        if out:
            out[position % len(out)] = value
    return bytes(out)


@pytest.mark.fuzz
@fuzz_settings()
@given(
    messages=st.lists(_valid_message(), max_size=5),
    edits=st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), max_size=6),
    noise=st.binary(max_size=64),
    split=st.integers(1, 97),
)
def test_decoder_and_bounds_fail_only_with_invalid_request(
    messages: list[sig.ClientMessage], edits: list[tuple[int, int]], noise: bytes, split: int
) -> None:
    """Random and mutated signaling bytes, fed in any split: every message out of the decoder
    is bounded or refused with INVALID_REQUEST naming a field; the decoder itself fails only
    with INVALID_REQUEST and a reason; nothing else is ever raised."""
    data = _mutate(b"".join(encode_message(m) for m in messages) + noise, edits)
    decoder: MessageDecoder[sig.ClientMessage] = MessageDecoder(sig.ClientMessage)
    try:
        for i in range(0, len(data), split):
            decoder.receive_data(data[i : i + split])
            for message in decoder:
                known = type(message)()
                known.CopyFrom(message)
                known.DiscardUnknownFields()
                assert known.ByteSize() == message.ByteSize()  # nothing unknown kept
                try:
                    check_bounds(message)
                except InvalidRequest as exc:
                    assert exc.details["field"]
                    assert exc.details["reason"] in (REASON_FIELD_TOO_LARGE, REASON_BAD_VALUE)
                else:
                    assert message.ByteSize() <= MAX_MESSAGE_SIZE
    except InvalidRequest as exc:
        assert exc.details["reason"]
        assert decoder.failed
