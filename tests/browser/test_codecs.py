"""The page's protobuf codec (darktower/web/proto.js, schema.js) in Chromium, against the generated
protobuf classes: byte-level round trips both ways (the media frame codec: test_codec_frames.py).

Each signaling case is one message built in Python. The page gets its bytes and its protobuf
JSON form (uint64 and bytes marked, since JSON has neither), and checks that
* decoding the bytes gives every field of the JSON form under its JSON name,
* re-encoding the decoded message gives the same bytes,
* encoding the JSON form (the page's own message) gives the same bytes,
and Python parses what the page encoded back into the same message.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import trio
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from darktower.protocol._framing import MessageDecoder, encode_message, encode_varint
from darktower.protocol.pb.v1 import common_pb2 as common
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from .._browser import run_page_script
from ._static import BLANK_PAGE, serve_web

pytestmark = pytest.mark.browser


U64_MAX = 2**64 - 1
BIG = 2**53 + 7  # not a safe JS integer: must come back as a BigInt


def _stream(kind: common.StreamType.ValueType = common.VIDEO_CAMERA) -> common.MediaStream:
    return common.MediaStream(
        stream_id=str(uuid.UUID(int=7)),
        stream_type=kind,
        metadata=common.StreamMetadata(
            codec="VP8",
            max_bitrate=1_500_000,
            video=common.VideoMetadata(
                width=640,
                height=480,
                framerate=30,
                simulcast_layers=[
                    common.SimulcastLayer(
                        layer_id=str(uuid.UUID(int=8)), width=320, height=240, max_bitrate=300_000
                    ),
                    common.SimulcastLayer(layer_id=str(uuid.UUID(int=9)), width=640, height=480),
                ],
            ),
        ),
    )


def _participant(n: int) -> sig.Participant:
    return sig.Participant(
        participant_id=f"p-{n}",
        name=f"Ünïcode näme {n} 🎥",
        streams=[_stream(), _stream(common.AUDIO)],
        joined_at=1_764_100_000_000_000 + n,
        public_key=bytes(range(32)),
        key_id=f"k{n}",
    )


KEY_SHARE = sig.E2EEKeyShare(
    from_participant_id="p-1", to_participant_id="p-2", key_id="k1", ciphertext=b"\x00\xffsecret"
)
QUALITY = sig.StreamQualityUpdate(
    stream_id="s", available_bitrate=800_000, packet_loss=0.25, rtt_ms=42
)

CLIENT_MESSAGES = [
    sig.ClientMessage(
        request_id=1,
        join=sig.JoinRequest(
            meeting_id="m-1",
            join_token="eyJ.a.b",
            participant_name="Alice",
            capabilities=sig.ParticipantCapabilities(
                video_codecs=["VP8", "VP9"],
                audio_codecs=["Opus"],
                supports_simulcast=True,
                max_video_streams=4,
            ),
            e2ee_public_key=b"\x01" * 32,
        ),
    ),
    sig.ClientMessage(
        request_id=2,
        publish=sig.PublishStream(
            stream_id=str(uuid.UUID(int=7)),
            stream_type=common.VIDEO_CAMERA,
            metadata=_stream().metadata,
        ),
    ),
    sig.ClientMessage(request_id=3, unpublish=sig.UnpublishStream(stream_id="s")),
    sig.ClientMessage(
        request_id=300,
        subscribe=sig.SubscribeStream(
            stream_id="s", options=sig.SubscriptionOptions(preferred_layer="l", max_bitrate=9)
        ),
    ),
    sig.ClientMessage(request_id=2**32, unsubscribe=sig.UnsubscribeStream(stream_id="s")),
    sig.ClientMessage(quality=QUALITY),
    sig.ClientMessage(request_id=5, leave=sig.LeaveRequest()),
    sig.ClientMessage(request_id=6, kick=sig.KickParticipant(participant_id="p-2")),
    sig.ClientMessage(request_id=7, end_meeting=sig.EndMeeting()),
    sig.ClientMessage(request_id=U64_MAX, ping=sig.Ping(timestamp=BIG), protocol_version=1),
    sig.ClientMessage(request_id=8, key_share=KEY_SHARE),
    sig.ClientMessage(request_id=9),  # no oneof member
]

SERVER_MESSAGES = [
    sig.ServerMessage(
        request_id=1,
        join_response=sig.JoinResponse(
            participant_id="p-0",
            existing_participants=[_participant(1), _participant(2)],
            media_server=sig.MediaServerInfo(
                media_handler_url="https://127.0.0.1:4434/v1/media", connection_token="ct"
            ),
            encryption_keys=sig.EncryptionKeys(public_key=b"\x02" * 32, key_id="k0"),
        ),
    ),
    sig.ServerMessage(participant_joined=sig.ParticipantJoined(participant=_participant(3))),
    sig.ServerMessage(
        participant_left=sig.ParticipantLeft(participant_id="p-3", reason=common.KICKED)
    ),
    sig.ServerMessage(
        participant_left=sig.ParticipantLeft(participant_id="p-4", reason=common.VOLUNTARY)
    ),
    sig.ServerMessage(
        stream_published=sig.StreamPublished(participant_id="p-1", stream=_stream(common.AUDIO))
    ),
    sig.ServerMessage(
        stream_unpublished=sig.StreamUnpublished(participant_id="p-1", stream_id="s")
    ),
    sig.ServerMessage(request_id=2, ack=sig.Ack(stream_id="s")),
    sig.ServerMessage(quality=QUALITY),
    sig.ServerMessage(key_frame_request=common.KeyFrameRequest(stream_id="s")),
    sig.ServerMessage(request_id=BIG, pong=sig.Pong(timestamp=U64_MAX), protocol_version=1),
    sig.ServerMessage(
        request_id=3,
        error=common.ErrorMessage(
            code=common.RATE_LIMITED,
            message="slow down",
            details={"reason": "rate", "retry_after": "1", "empty": ""},
        ),
    ),
    sig.ServerMessage(key_share=KEY_SHARE),
    sig.ServerMessage(
        session_ended=sig.SessionEnded(reason=common.MEETING_ENDED, message="The host ended it")
    ),
    sig.ServerMessage(session_ended=sig.SessionEnded(reason=common.VOLUNTARY)),
]


def _marked(message: Message) -> dict[str, Any]:
    """``message`` in protobuf JSON form, uint64 as {"$bigint": str}, bytes as {"$bytes": hex}."""
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            out[field.json_name] = dict(value)
            continue
        items = list(value) if field.is_repeated else [value]
        converted = []
        for item in items:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                converted.append(_marked(item))
            elif field.type == FieldDescriptor.TYPE_UINT64:
                converted.append({"$bigint": str(item)})
            elif field.type == FieldDescriptor.TYPE_BYTES:
                converted.append({"$bytes": item.hex()})
            else:
                converted.append(item)
        out[field.json_name] = converted if field.is_repeated else converted[0]
    return out


def _case(message: Message) -> dict[str, Any]:
    return {
        "type": type(message).__name__,
        "hex": message.SerializeToString(deterministic=True).hex(),
        "json": _marked(message),
    }


# Unknown fields a newer server may send: varint 99, length-delimited 98, fixed64 97, fixed32 96,
# and a oneof member numbered 50 that this page does not know.
UNKNOWN_TAIL = (
    encode_varint(99 << 3 | 0)
    + encode_varint(2**63)
    + encode_varint(98 << 3 | 2)
    + b"\x03abc"
    + encode_varint(97 << 3 | 1)
    + bytes(8)
    + encode_varint(96 << 3 | 5)
    + bytes(4)
    + encode_varint(50 << 3 | 2)
    + b"\x00"
)

PROTO_SCRIPT = """
async ({cases, unknown, stream, chunkSizes, tooLarge}) => {
  const P = await import("/static/proto.js");
  const B = await import("/static/bytes.js");
  const revive = (v) => {
    if (Array.isArray(v)) return v.map(revive);
    if (v && typeof v === "object") {
      if ("$bigint" in v) return BigInt(v.$bigint);
      if ("$bytes" in v) return B.fromHex(v.$bytes);
      return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, revive(x)]));
    }
    return v;
  };
  // Every field of `want` (revived JSON) is in `got` with the same value; uint64 may be a
  // Number or a BigInt, but a value beyond 2**53 must be a BigInt.
  const same = (want, got, path) => {
    if (typeof want === "bigint") {
      if (want > BigInt(Number.MAX_SAFE_INTEGER) && typeof got !== "bigint")
        throw new Error(`${path}: ${got} should be a BigInt`);
      if (BigInt(got) !== want) throw new Error(`${path}: ${got} != ${want}`);
    } else if (want instanceof Uint8Array) {
      if (!(got instanceof Uint8Array) || B.toHex(got) !== B.toHex(want))
        throw new Error(`${path}: bytes differ`);
    } else if (Array.isArray(want)) {
      if (!Array.isArray(got) || got.length !== want.length) throw new Error(`${path}: length`);
      want.forEach((w, i) => same(w, got[i], `${path}[${i}]`));
    } else if (want && typeof want === "object") {
      if (!got || typeof got !== "object") throw new Error(`${path}: missing`);
      for (const k of Object.keys(want)) same(want[k], got[k], `${path}.${k}`);
    } else if (want !== got) {
      throw new Error(`${path}: ${JSON.stringify(got)} != ${JSON.stringify(want)}`);
    }
  };
  const out = {reencoded: [], own: [], kinds: []};
  for (const c of cases) {
    const decoded = P.decode(c.type, B.fromHex(c.hex));
    same(revive(c.json), decoded, c.type);
    out.reencoded.push(B.toHex(P.encode(c.type, decoded)));
    out.own.push(B.toHex(P.encode(c.type, revive(c.json))));
    out.kinds.push(P.kindOf(decoded, c.type) ?? null);
  }
  // Unknown fields are skipped, and a unknown oneof member leaves the known one alone.
  const withUnknown = P.decode("ServerMessage", B.fromHex(unknown));
  out.unknownReencoded = B.toHex(P.encode("ServerMessage", withUnknown));
  out.unknownKind = P.kindOf(withUnknown) ?? null;
  // The delimited stream, fed in chunks of each size; then the page's own stream.
  const all = B.fromHex(stream);
  out.streamCounts = [];
  for (const size of chunkSizes) {
    const readable = new ReadableStream({start(ctl) {
      for (let i = 0; i < all.length; i += size) ctl.enqueue(all.slice(i, i + size));
      ctl.close();
    }});
    const got = [];
    for await (const m of P.readMessages(readable, "ServerMessage")) got.push(m);
    got.forEach((m, i) => {
      if (B.toHex(P.encode("ServerMessage", m)) !== cases.filter(c => c.type === "ServerMessage")[i].hex)
        throw new Error(`stream message ${i} differs (chunk ${size})`);
    });
    out.streamCounts.push(got.length);
  }
  out.ownStream = B.toHex(B.concatBytes(cases.filter(c => c.type === "ClientMessage")
      .map(c => P.encodeDelimited("ClientMessage", revive(c.json)))));
  // A declared length over 64 KiB fails at once, before any body arrives.
  const dec = new P.MessageDecoder("ServerMessage");
  dec.push(B.fromHex(tooLarge));
  try { dec.next(); out.tooLarge = "accepted"; } catch (e) { out.tooLarge = e.reason; }
  try { P.encodeDelimited("ServerMessage", {error: {message: "x".repeat(70000)}});
        out.encodeTooLarge = "accepted"; } catch (e) { out.encodeTooLarge = e.reason; }
  const cut = new P.MessageDecoder("ServerMessage");
  cut.push(all.slice(0, 5));
  try { cut.next(); cut.end(); out.truncated = "accepted"; } catch (e) { out.truncated = e.reason; }
  return out;
}
"""


async def test_signaling_messages_round_trip_through_the_page() -> None:
    messages: list[Message] = [*CLIENT_MESSAGES, *SERVER_MESSAGES]
    cases = [_case(m) for m in messages]
    unknown = sig.ServerMessage(request_id=4, ack=sig.Ack(stream_id="s"))
    stream = b"".join(encode_message(m) for m in SERVER_MESSAGES)
    arg = {
        "cases": cases,
        "unknown": (unknown.SerializeToString() + UNKNOWN_TAIL).hex(),
        "stream": stream.hex(),
        "chunkSizes": [1, 3, 1000, len(stream)],
        "tooLarge": (encode_varint(64 * 1024 + 1) + b"\x00" * 10).hex(),
    }
    with serve_web({"/blank": BLANK_PAGE}) as base:
        result = await trio.to_thread.run_sync(run_page_script, base + "/blank", PROTO_SCRIPT, arg)

    for message, case, reencoded, own, kind in zip(
        messages, cases, result["reencoded"], result["own"], result["kinds"], strict=True
    ):
        assert reencoded == case["hex"], message
        assert own == case["hex"], message
        parsed = type(message).FromString(bytes.fromhex(own))
        assert parsed == message
        expected_kind = message.WhichOneof("message")
        assert kind == (None if expected_kind is None else json_format_name(message, expected_kind))
    assert result["unknownReencoded"] == unknown.SerializeToString().hex()
    assert result["unknownKind"] == "ack"
    assert result["streamCounts"] == [len(SERVER_MESSAGES)] * 4
    decoder = MessageDecoder(sig.ClientMessage)
    decoder.receive_data(bytes.fromhex(result["ownStream"]))
    assert list(decoder) == CLIENT_MESSAGES
    assert result["tooLarge"] == "message_too_large"
    assert result["encodeTooLarge"] == "message_too_large"
    assert result["truncated"] == "truncated_message"


def json_format_name(message: Message, field_name: str) -> str:
    return str(message.DESCRIPTOR.fields_by_name[field_name].json_name)


# --- the field tables against the descriptors ---------------------------------------------------

# The messages the page must speak (the task's list) and the envelopes' other members.
REQUIRED_MESSAGES = {
    "ClientMessage", "ServerMessage", "JoinRequest", "JoinResponse", "Participant",
    "MediaStream", "StreamMetadata", "VideoMetadata", "MediaServerInfo", "EncryptionKeys",
    "ParticipantJoined", "ParticipantLeft", "PublishStream", "StreamPublished",
    "StreamUnpublished", "SubscribeStream", "UnsubscribeStream", "Ack", "KeyFrameRequest",
    "KickParticipant", "EndMeeting", "LeaveRequest", "Ping", "Pong", "ErrorMessage",
    "SessionEnded", "StreamQualityUpdate",
}  # fmt: skip

_SCALARS = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_ENUM: "enum",
    FieldDescriptor.TYPE_FLOAT: "float",
}

SCHEMA_SCRIPT = """
async () => {
  const S = await import("/static/schema.js");
  const P = await import("/static/proto.js");
  return {schema: S.SCHEMA, types: P.MESSAGE_TYPES,
          enums: {StreamType: S.StreamType, LeaveReason: S.LeaveReason, ErrorCode: S.ErrorCode}};
}
"""


def _expected_fields(name: str) -> list[list[Any]]:
    descriptor = sig.DESCRIPTOR.message_types_by_name.get(
        name
    ) or common.DESCRIPTOR.message_types_by_name.get(name)
    assert descriptor is not None, name
    rows: list[list[Any]] = []
    for field in sorted(descriptor.fields, key=lambda f: f.number):
        row: list[Any] = [field.number, field.json_name]
        message_type = field.message_type
        if message_type is not None and message_type.GetOptions().map_entry:
            row.append("map")
        elif message_type is not None:
            row.append(message_type.name)
        else:
            row.append(_SCALARS[field.type])
        if field.containing_oneof is not None:
            row.append("oneof")
        elif field.is_repeated and row[2] != "map":
            row.append("repeated")
        rows.append(row)
    return rows


async def test_field_tables_match_the_proto_files() -> None:
    with serve_web({"/blank": BLANK_PAGE}) as base:
        result = await trio.to_thread.run_sync(run_page_script, base + "/blank", SCHEMA_SCRIPT)
    assert REQUIRED_MESSAGES <= set(result["types"])
    for name in result["types"]:
        assert result["schema"][name] == _expected_fields(name), name
    for enum_name, values in result["enums"].items():
        enum = common.DESCRIPTOR.enum_types_by_name[enum_name]
        assert values == {v.name: v.number for v in enum.values}, enum_name
