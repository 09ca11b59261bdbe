"""The generated protobuf code carries the contract exactly, and agrees with our enums.

The tables below are the original contract's ``message`` and ``enum`` blocks, copied once:
a contract field that is renamed, renumbered or retyped fails here. Our additions may add
fields and values, never change these.
"""

from __future__ import annotations

import enum
import pathlib
import re

import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from darktower.errors import ErrorCode, InvalidRequest
from darktower.model import LeaveReason, StreamType
from darktower.protocol import (
    error_code_from_pb,
    error_code_to_pb,
    leave_reason_from_pb,
    leave_reason_to_pb,
    pb,
    stream_type_from_pb,
    stream_type_to_pb,
)

PACKAGE = "darktower.v1"

CONTRACT_MESSAGES: dict[str, dict[str, tuple[int, str]]] = {
    "JoinRequest": {
        "meeting_id": (1, "string"),
        "join_token": (2, "string"),
        "participant_name": (3, "string"),
        "capabilities": (4, "ParticipantCapabilities"),
    },
    "ParticipantCapabilities": {
        "video_codecs": (1, "repeated string"),
        "audio_codecs": (2, "repeated string"),
        "supports_simulcast": (3, "bool"),
        "max_video_streams": (4, "uint32"),
    },
    "JoinResponse": {
        "participant_id": (1, "string"),
        "existing_participants": (2, "repeated Participant"),
        "media_server": (3, "MediaServerInfo"),
        "encryption_keys": (4, "EncryptionKeys"),
    },
    "Participant": {
        "participant_id": (1, "string"),
        "name": (2, "string"),
        "streams": (3, "repeated MediaStream"),
        "joined_at": (4, "uint64"),
    },
    "MediaServerInfo": {"media_handler_url": (1, "string"), "connection_token": (2, "string")},
    "EncryptionKeys": {"public_key": (1, "bytes"), "key_id": (2, "string")},
    "ParticipantJoined": {"participant": (1, "Participant")},
    "ParticipantLeft": {"participant_id": (1, "string"), "reason": (2, "LeaveReason")},
    "PublishStream": {
        "stream_id": (1, "string"),
        "stream_type": (2, "StreamType"),
        "metadata": (3, "StreamMetadata"),
    },
    "StreamMetadata": {
        "codec": (1, "string"),
        "max_bitrate": (2, "uint32"),
        "video": (3, "VideoMetadata"),
    },
    "VideoMetadata": {
        "width": (1, "uint32"),
        "height": (2, "uint32"),
        "framerate": (3, "uint32"),
        "simulcast_layers": (4, "repeated SimulcastLayer"),
    },
    "SimulcastLayer": {
        "layer_id": (1, "string"),
        "width": (2, "uint32"),
        "height": (3, "uint32"),
        "max_bitrate": (4, "uint32"),
    },
    "StreamPublished": {"participant_id": (1, "string"), "stream": (2, "MediaStream")},
    "MediaStream": {
        "stream_id": (1, "string"),
        "stream_type": (2, "StreamType"),
        "metadata": (3, "StreamMetadata"),
    },
    "SubscribeStream": {"stream_id": (1, "string"), "options": (2, "SubscriptionOptions")},
    "SubscriptionOptions": {"preferred_layer": (1, "string"), "max_bitrate": (2, "uint32")},
    "UnsubscribeStream": {"stream_id": (1, "string")},
    "StreamQualityUpdate": {
        "stream_id": (1, "string"),
        "available_bitrate": (2, "uint32"),
        "packet_loss": (3, "float"),
        "rtt_ms": (4, "uint32"),
    },
    "RegisterParticipant": {
        "participant_id": (1, "string"),
        "meeting_id": (2, "string"),
        "streams": (3, "repeated MediaStream"),
    },
    "RegisterParticipantResponse": {
        "connection_token": (1, "string"),
        "media_handler_url": (2, "string"),
    },
    "RouteMediaCommand": {
        "source_stream_id": (1, "string"),
        "destination_participant_ids": (2, "repeated string"),
        "options": (3, "RoutingOptions"),
    },
    "RoutingOptions": {
        "transcode": (1, "bool"),
        "target_codec": (2, "string"),
        "target_bitrate": (3, "uint32"),
        "mix_audio": (4, "bool"),
    },
    "MediaTelemetry": {
        "stream_id": (1, "string"),
        "bytes_sent": (2, "uint64"),
        "bytes_received": (3, "uint64"),
        "packet_loss": (4, "float"),
        "bitrate": (5, "uint32"),
        "jitter_ms": (6, "uint32"),
        "timestamp": (7, "uint64"),
    },
    "RegisterMeetingController": {
        "controller_id": (1, "string"),
        "region": (2, "string"),
        "endpoint": (3, "string"),
        "capacity": (4, "ControllerCapacity"),
    },
    "ControllerCapacity": {
        "max_meetings": (1, "uint32"),
        "current_meetings": (2, "uint32"),
        "max_participants": (3, "uint32"),
        "current_participants": (4, "uint32"),
    },
    "Heartbeat": {
        "controller_id": (1, "string"),
        "capacity": (2, "ControllerCapacity"),
        "health": (3, "HealthStatus"),
    },
    "AssignMeeting": {"meeting_id": (1, "string"), "config": (2, "MeetingConfig")},
    "MeetingConfig": {
        "display_name": (1, "string"),
        "max_participants": (2, "uint32"),
        "enable_e2e_encryption": (3, "bool"),
        "recording_enabled": (4, "bool"),
    },
    "ErrorMessage": {
        "code": (1, "ErrorCode"),
        "message": (2, "string"),
        "details": (3, "map<string,string>"),
    },
}

CONTRACT_ENUMS: dict[str, dict[str, int]] = {
    "LeaveReason": {"VOLUNTARY": 0, "KICKED": 1, "CONNECTION_LOST": 2, "MEETING_ENDED": 3},
    "StreamType": {"AUDIO": 0, "VIDEO_CAMERA": 1, "VIDEO_SCREEN": 2},
    "HealthStatus": {"HEALTHY": 0, "DEGRADED": 1, "UNHEALTHY": 2},
    "ErrorCode": {
        "UNKNOWN": 0,
        "INVALID_REQUEST": 1,
        "UNAUTHORIZED": 2,
        "FORBIDDEN": 3,
        "NOT_FOUND": 4,
        "CONFLICT": 5,
        "INTERNAL_ERROR": 6,
        "CAPACITY_EXCEEDED": 7,
        "STREAM_ERROR": 8,
    },
}

_SCALARS = {
    value: name.removeprefix("TYPE_").lower()
    for name, value in vars(FieldDescriptor).items()
    if name.startswith("TYPE_")
}


def _type_of(field: FieldDescriptor) -> str:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        entry: Descriptor = field.message_type
        if entry.GetOptions().map_entry:
            key, value = (_type_of(entry.fields_by_name[n]) for n in ("key", "value"))
            return f"map<{key},{value}>"
        name = entry.name
    elif field.type == FieldDescriptor.TYPE_ENUM:
        name = field.enum_type.name
    else:
        name = _SCALARS[field.type]
    return f"repeated {name}" if field.is_repeated else name


def _pool() -> descriptor_pool.DescriptorPool:
    # Importing the package registers every generated file in the default pool.
    assert pb.signaling_pb2 and pb.registry_pb2 and pb.meeting_control_pb2
    assert pb.media_control_pb2 and pb.common_pb2
    return descriptor_pool.Default()


@pytest.mark.parametrize("message", sorted(CONTRACT_MESSAGES))
def test_contract_message_fields_are_unchanged(message: str) -> None:
    descriptor = _pool().FindMessageTypeByName(f"{PACKAGE}.{message}")
    actual = {
        name: (descriptor.fields_by_name[name].number, _type_of(descriptor.fields_by_name[name]))
        for name in CONTRACT_MESSAGES[message]
        if name in descriptor.fields_by_name
    }
    assert actual == CONTRACT_MESSAGES[message]
    # Additions never reuse a contract number.
    contract_numbers = {number for number, _ in CONTRACT_MESSAGES[message].values()}
    for field in descriptor.fields:
        if field.name not in CONTRACT_MESSAGES[message]:
            assert field.number not in contract_numbers, field.name


@pytest.mark.parametrize("name", sorted(CONTRACT_ENUMS))
def test_contract_enum_values_are_unchanged(name: str) -> None:
    descriptor = _pool().FindEnumTypeByName(f"{PACKAGE}.{name}")
    values = {v.name: v.number for v in descriptor.values}
    assert {k: values.get(k) for k in CONTRACT_ENUMS[name]} == CONTRACT_ENUMS[name]


def test_additions_are_the_decided_ones() -> None:
    # A spot check of the additive fields others rely on (names and numbers).
    pool = _pool()

    def number(message: str, field: str) -> int:
        return int(pool.FindMessageTypeByName(f"{PACKAGE}.{message}").fields_by_name[field].number)

    assert number("JoinRequest", "e2ee_public_key") == 5
    assert (number("Participant", "public_key"), number("Participant", "key_id")) == (5, 6)
    assert number("ClientMessage", "request_id") == number("ServerMessage", "request_id") == 1
    assert number("RouteMediaCommand", "meeting_id") == 4
    assert number("RoutingOptions", "preferred_layer") == 5
    assert number("Heartbeat", "meetings") == 4
    assert pb.common_pb2.ErrorCode.Value("RATE_LIMITED") == 9


@pytest.mark.parametrize(
    ("ours", "generated"),
    [
        (LeaveReason, pb.common_pb2.LeaveReason),
        (StreamType, pb.common_pb2.StreamType),
        (ErrorCode, pb.common_pb2.ErrorCode),
    ],
)
def test_enum_values_agree_with_generated_code(ours: type[enum.IntEnum], generated: object) -> None:
    items = generated.items()  # type: ignore[attr-defined]
    assert {member.name: member.value for member in ours} == dict(items)


def test_enum_conversions_round_trip() -> None:
    for reason in LeaveReason:
        assert leave_reason_from_pb(leave_reason_to_pb(reason)) is reason
        assert pb.common_pb2.LeaveReason.Name(leave_reason_to_pb(reason)) == reason.name
    for stream_type in StreamType:
        assert stream_type_from_pb(stream_type_to_pb(stream_type)) is stream_type
        assert pb.common_pb2.StreamType.Name(stream_type_to_pb(stream_type)) == stream_type.name
    for code in ErrorCode:
        assert error_code_from_pb(error_code_to_pb(code)) is code


def test_unknown_enum_values_from_a_newer_peer() -> None:
    # proto3 enums are open: a message can carry a number we have no name for.
    left = pb.signaling_pb2.ParticipantLeft.FromString(b"\x10\x2a")  # reason = 42
    assert left.reason == 42
    with pytest.raises(InvalidRequest) as leave:
        leave_reason_from_pb(left.reason)
    assert leave.value.details == {"field": "reason"}
    with pytest.raises(InvalidRequest):
        stream_type_from_pb(7)
    assert error_code_from_pb(99) is ErrorCode.UNKNOWN


PROTO_DIR = pathlib.Path(__file__).resolve().parents[2] / "proto" / "darktower" / "v1"
ADDITION = "Addition to the contract"
_BLOCK = re.compile(r"^(message|enum|service) (\w+) \{$")
_MEMBER = re.compile(r"^(?:repeated |map<[\w, ]+> )?(?:[\w.]+ )?(\w+) = \d+;")


def _comment_above(lines: list[str], index: int) -> str:
    """The run of ``//`` comment lines directly above ``lines[index]``."""
    above: list[str] = []
    while index > 0 and lines[index - 1].strip().startswith("//"):
        index -= 1
        above.append(lines[index])
    return "\n".join(reversed(above))


def test_every_addition_is_marked_in_the_proto_files() -> None:
    unmarked: list[str] = []
    seen: set[str] = set()
    for path in sorted(PROTO_DIR.glob("*.proto")):
        lines = path.read_text().splitlines()
        block: str | None = None
        for i, raw in enumerate(lines):
            line = raw.split("//")[0].strip()
            if (opened := _BLOCK.match(line)) is not None:
                block = opened.group(2)
                seen.add(block)
                known = block in CONTRACT_MESSAGES or block in CONTRACT_ENUMS
                if not known and ADDITION not in _comment_above(lines, i):
                    unmarked.append(f"{path.name}: {opened.group(1)} {block}")
            elif line == "}":
                block = None
            elif block is not None and (member := _MEMBER.match(line)) is not None:
                name = member.group(1)
                contract = CONTRACT_MESSAGES.get(block, {}) or CONTRACT_ENUMS.get(block, {})
                if contract and name not in contract and ADDITION not in _comment_above(lines, i):
                    unmarked.append(f"{path.name}: {block}.{name}")
    assert set(CONTRACT_MESSAGES) | set(CONTRACT_ENUMS) <= seen
    assert unmarked == []
