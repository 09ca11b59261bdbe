"""The protocol version in every envelope and internal RPC request (docs/protocol.md §12)."""

from __future__ import annotations

from typing import Any

import pytest

from darktower.errors import InvalidRequest
from darktower.protocol import PROTOCOL_VERSION, SUPPORTED_VERSIONS, check_version, pb, version_of
from darktower.protocol.pb.v1 import media_control_grpc, meeting_control_grpc, registry_grpc
from darktower.protocol.versions import has_version_field


class _Routes:
    def __getattr__(self, name: str) -> str:
        return name


def _request_types() -> list[Any]:
    bases = (
        media_control_grpc.MediaControlBase,
        meeting_control_grpc.MeetingControlBase,
        registry_grpc.ControllerRegistryBase,
    )
    return [h.request_type for base in bases for h in base.__mapping__(_Routes()).values()]


def test_every_rpc_request_and_envelope_has_the_field() -> None:
    types = [*_request_types(), pb.signaling_pb2.ClientMessage, pb.signaling_pb2.ServerMessage]
    assert len(types) >= 14
    missing = [t.__name__ for t in types if not has_version_field(t())]
    assert missing == []
    # One field number everywhere, so a reader of raw bytes finds it in the same place.
    assert {t.DESCRIPTOR.fields_by_name["protocol_version"].number for t in types} == {15}


def test_a_message_without_the_field_speaks_version_1() -> None:
    message = pb.signaling_pb2.ClientMessage()
    assert version_of(message) == 1
    check_version(message)
    assert PROTOCOL_VERSION in SUPPORTED_VERSIONS


@pytest.mark.parametrize("version", [2, 7, 2**32 - 1])
def test_an_unsupported_version_is_an_invalid_request_naming_the_supported(version: int) -> None:
    message = pb.signaling_pb2.ClientMessage(protocol_version=version)
    with pytest.raises(InvalidRequest) as caught:
        check_version(message)
    assert f"unsupported protocol version {version}" in caught.value.message
    assert caught.value.details == {"field": "protocol_version", "supported": "1"}


def test_messages_without_the_field_are_not_versioned() -> None:
    assert not has_version_field(pb.signaling_pb2.JoinRequest())
    assert not has_version_field(object())
