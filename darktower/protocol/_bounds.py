"""Bounds of every field a client can send on signaling (docs/protocol.md, "Signaling limits").

A message that fits the 64 KiB frame can still carry one huge field; the MC keeps and relays
some of them (stream metadata, public keys, key shares), and a relayed copy grows (the MC adds
ids), so one client could make a message to somebody else too large to send. Each string,
bytes and repeated field reachable from ``ClientMessage`` has a maximum here, checked as soon
as a message is decoded, before any handler sees it: the first field over its bound is refused
with :class:`~darktower.errors.InvalidRequest` naming it (``details["field"]``, a path such as
``publish.metadata.video.simulcast_layers[1].layer_id``). Unknown fields are dropped first
(by :class:`~darktower.protocol.MessageDecoder`), so nothing the MC does not understand is relayed; an enum value the
contract does not define is refused too.

Strings are bounded in characters (code points) and bytes fields in bytes; the worst-case size
of what the MC builds from bounded input is checked in ``tests/protocol/test_signaling_bounds.py``
(one participant, with the most streams, always fits one message).
"""

from __future__ import annotations

from typing import Final

import attrs
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from darktower.errors import InvalidRequest

# Error reason (``details["reason"]``) of a field over its bound or with an undefined value.
REASON_FIELD_TOO_LARGE: Final = "field_too_large"
REASON_BAD_VALUE: Final = "field_value_invalid"

# --- limits ------------------------------------------------------------------------------------
# Ids the MC or clients make are UUIDs (36 characters); room for other schemes.
MAX_ID_CHARS: Final = 128
# A meeting id (the GC's UUIDs).
MAX_MEETING_ID_CHARS: Final = 128
# The join token, as darktower.protocol.tokens.MAX_TOKEN_LENGTH bounds it before parsing.
MAX_JOIN_TOKEN_CHARS: Final = 4096
# A resume token (the MC makes them: 43 characters of URL-safe base64; docs/protocol.md §13).
MAX_RESUME_TOKEN_CHARS: Final = 128
# A display name (the name shown to others comes from the join token, bounded the same).
MAX_NAME_CHARS: Final = 256
# A codec name ("VP8", "opus", "H264" ...).
MAX_CODEC_CHARS: Final = 64
# Codec names listed per kind in ParticipantCapabilities.
MAX_CAPABILITY_CODECS: Final = 16
# A simulcast layer id (a UUID in the media frame header) and a preferred layer.
MAX_LAYER_ID_CHARS: Final = 64
# Simulcast layers of one stream.
MAX_SIMULCAST_LAYERS: Final = 4
# An X25519 public key is 32 bytes (docs/protocol.md, "Signaling limits").
MAX_E2EE_PUBLIC_KEY_BYTES: Final = 32
# A sender key id the MC assigned (a decimal number).
MAX_KEY_ID_CHARS: Final = 64
# An encrypted media key for one peer: ours is ~100 bytes (ephemeral key, nonce, key, tag).
MAX_KEY_SHARE_CIPHERTEXT_BYTES: Final = 1024
# A host's moderation: its actions (one of each) and the message shown (docs/protocol.md §18.2).
MAX_MODERATION_ACTIONS: Final = 6
MAX_MODERATION_MESSAGE_CHARS: Final = 200
# A chat message's text (docs/protocol.md §18.3).
MAX_CHAT_TEXT_CHARS: Final = 2000


@attrs.frozen
class Bound:
    """The maximum of one field: ``length`` per value (characters or bytes), ``items`` for a
    repeated field's entry count."""

    length: int | None = None
    items: int | None = None


_P = "darktower.v1."
# Every string, bytes and repeated field reachable from ClientMessage, by full name. A field
# missing here is refused by :func:`check_bounds_table` (run by the tests), so a field added
# to the .proto cannot go unbounded.
CLIENT_FIELD_BOUNDS: Final[dict[str, Bound]] = {
    _P + "JoinRequest.meeting_id": Bound(MAX_MEETING_ID_CHARS),
    _P + "JoinRequest.join_token": Bound(MAX_JOIN_TOKEN_CHARS),
    _P + "JoinRequest.participant_name": Bound(MAX_NAME_CHARS),
    _P + "JoinRequest.e2ee_public_key": Bound(MAX_E2EE_PUBLIC_KEY_BYTES),
    _P + "JoinRequest.resume_token": Bound(MAX_RESUME_TOKEN_CHARS),
    _P + "ParticipantCapabilities.video_codecs": Bound(MAX_CODEC_CHARS, MAX_CAPABILITY_CODECS),
    _P + "ParticipantCapabilities.audio_codecs": Bound(MAX_CODEC_CHARS, MAX_CAPABILITY_CODECS),
    _P + "PublishStream.stream_id": Bound(MAX_ID_CHARS),
    _P + "StreamMetadata.codec": Bound(MAX_CODEC_CHARS),
    _P + "VideoMetadata.simulcast_layers": Bound(items=MAX_SIMULCAST_LAYERS),
    _P + "SimulcastLayer.layer_id": Bound(MAX_LAYER_ID_CHARS),
    _P + "UnpublishStream.stream_id": Bound(MAX_ID_CHARS),
    _P + "SubscribeStream.stream_id": Bound(MAX_ID_CHARS),
    _P + "SubscriptionOptions.preferred_layer": Bound(MAX_LAYER_ID_CHARS),
    _P + "UnsubscribeStream.stream_id": Bound(MAX_ID_CHARS),
    _P + "StreamQualityUpdate.stream_id": Bound(MAX_ID_CHARS),
    _P + "StreamQualityUpdate.layer_id": Bound(MAX_LAYER_ID_CHARS),
    _P + "StreamQualityUpdate.layers": Bound(items=MAX_SIMULCAST_LAYERS),
    _P + "LayerFeedback.layer_id": Bound(MAX_LAYER_ID_CHARS),
    _P + "KickParticipant.participant_id": Bound(MAX_ID_CHARS),
    _P + "E2EEKeyShare.from_participant_id": Bound(MAX_ID_CHARS),
    _P + "E2EEKeyShare.to_participant_id": Bound(MAX_ID_CHARS),
    _P + "E2EEKeyShare.key_id": Bound(MAX_KEY_ID_CHARS),
    _P + "E2EEKeyShare.ciphertext": Bound(MAX_KEY_SHARE_CIPHERTEXT_BYTES),
    _P + "ModerateParticipant.participant_id": Bound(MAX_ID_CHARS),
    _P + "ModerateParticipant.actions": Bound(items=MAX_MODERATION_ACTIONS),
    _P + "ModerateParticipant.message": Bound(MAX_MODERATION_MESSAGE_CHARS),
    _P + "SendChat.text": Bound(MAX_CHAT_TEXT_CHARS),
    _P + "SendChat.to_participant_id": Bound(MAX_ID_CHARS),
}

_STRING = FieldDescriptor.TYPE_STRING
_BYTES = FieldDescriptor.TYPE_BYTES
_MESSAGE = FieldDescriptor.TYPE_MESSAGE
_ENUM = FieldDescriptor.TYPE_ENUM


def check_bounds(message: Message, bounds: dict[str, Bound] = CLIENT_FIELD_BOUNDS) -> None:
    """Raise ``InvalidRequest`` naming the first field of ``message`` over its bound.

    Also refuses an enum value the schema does not define. Walks only the fields that are
    set, so a small message costs little.
    """
    _check(message, "", bounds)


def _check(message: Message, prefix: str, bounds: dict[str, Bound]) -> None:
    for field, value in message.ListFields():
        path = prefix + field.name
        bound = bounds.get(field.full_name)
        if field.is_repeated:
            if bound is not None and bound.items is not None and len(value) > bound.items:
                raise _too_large(path, bound.items, "entries")
            for index, item in enumerate(value):
                _check_value(field, item, f"{path}[{index}]", bound, bounds)
        else:
            _check_value(field, value, path, bound, bounds)


def _check_value(
    field: FieldDescriptor,
    value: object,
    path: str,
    bound: Bound | None,
    bounds: dict[str, Bound],
) -> None:
    if field.type == _MESSAGE:
        assert isinstance(value, Message)
        _check(value, path + ".", bounds)
    elif field.type in (_STRING, _BYTES):
        assert isinstance(value, str | bytes)
        if bound is None or bound.length is None:
            raise _too_large(path, 0, "characters" if field.type == _STRING else "bytes")
        if len(value) > bound.length:
            unit = "characters" if field.type == _STRING else "bytes"
            raise _too_large(path, bound.length, unit)
    elif field.type == _ENUM:
        assert field.enum_type is not None
        if value not in field.enum_type.values_by_number:
            raise InvalidRequest(
                f"{path} is not a defined {field.enum_type.name} value",
                details={"reason": REASON_BAD_VALUE, "field": path},
            )


def _too_large(path: str, limit: int, unit: str) -> InvalidRequest:
    return InvalidRequest(
        f"{path} exceeds its limit of {limit} {unit}",
        details={"reason": REASON_FIELD_TOO_LARGE, "field": path, "limit": str(limit)},
    )


def unbounded_fields(descriptor: Descriptor, bounds: dict[str, Bound]) -> list[str]:
    """Full names of string, bytes and repeated fields reachable from ``descriptor`` that
    ``bounds`` lacks (a repeated message field needs an ``items`` bound)."""
    missing: list[str] = []
    seen: set[str] = set()

    def walk(d: Descriptor) -> None:
        if d.full_name in seen:
            return
        seen.add(d.full_name)
        for field in d.fields:
            bound = bounds.get(field.full_name)
            repeated = field.is_repeated
            if field.type in (_STRING, _BYTES) and (bound is None or bound.length is None):
                missing.append(field.full_name)
            elif repeated and (bound is None or bound.items is None):
                missing.append(field.full_name)
            if field.type == _MESSAGE and field.message_type is not None:
                walk(field.message_type)

    walk(descriptor)
    return missing
