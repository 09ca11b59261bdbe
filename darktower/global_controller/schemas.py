"""Request bodies of the GC's REST API, validated by hand into attrs classes.

Each check says exactly what is wrong (``InvalidRequest`` naming the field), unknown fields
are refused, and sizes are bounded (``_limits.py``). No I/O here. ``MeetingSettings`` is the store's (one
definition), re-exported here.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from darktower.errors import InvalidRequest
from darktower.global_controller._limits import (
    MAX_BAN_S,
    MAX_BODY_BYTES,
    MAX_CREDENTIAL_FIELD,
    MAX_DISPLAY_NAME,
    MAX_E2EE_PARTICIPANTS,
    MAX_HINT_LENGTH,
    MAX_PARTICIPANT_NAME,
    MAX_PARTICIPANTS_LIMIT,
    MAX_REGION,
)
from darktower.global_controller.store import MeetingSettings as MeetingSettings
from darktower.model import DEFAULT_MAX_PARTICIPANTS, Role
from darktower.protocol.tokens import PUBLISH_KINDS


@attrs.frozen
class CreateMeeting:
    display_name: str
    max_participants: int = DEFAULT_MAX_PARTICIPANTS
    settings: MeetingSettings = MeetingSettings()
    # Our addition: the region to place the meeting in ("" = the GC's default region).
    region: str = ""


@attrs.frozen
class TokenRequest:
    client_id: str
    client_secret: str


@attrs.frozen
class JoinMeeting:
    participant_name: str = ""
    # Our addition: the MC the caller could not reach (its signaling URL or controller id; ""
    # for none), checked by the GC (docs/protocol.md §14).
    unreachable_controller: str = ""
    # Our additions, the owner's only (docs/protocol.md §18.2): what the participant may
    # publish (None: everything) and the role of the token ("": the caller's own).
    may_publish: frozenset[str] | None = None
    role: str = ""


# The REST names of the moderation actions (docs/protocol.md §18.2).
MODERATION_ACTIONS: Final = (
    "mute_audio",
    "stop_video",
    "stop_screen",
    "allow_audio",
    "allow_video",
    "allow_screen",
)
MAX_MODERATION_MESSAGE: Final = 200


@attrs.frozen
class Moderate:
    actions: tuple[str, ...]
    message: str = ""


def parse_json(body: bytes) -> Any:
    if len(body) > MAX_BODY_BYTES:
        raise InvalidRequest(f"request body is larger than {MAX_BODY_BYTES} bytes")
    if not body.strip():
        raise InvalidRequest("request body is empty; a JSON object is expected")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, UnicodeDecodeError and integers longer than
        # Python converts (4,300 digits); RecursionError deeply nested arrays or objects.
        why = str(exc) if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise InvalidRequest(f"request body is not valid JSON: {why}") from exc


def check_text(value: str, name: str) -> str:
    """``value`` if every database and protobuf can carry it and a person can read it: valid
    Unicode (no lone surrogate, which JSON's ``\\ud800`` escapes allow) and no control
    character (NUL, which PostgreSQL refuses, line breaks, C1 codes). ``InvalidRequest``
    naming the field otherwise."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"field '{name}' is not valid Unicode (a lone surrogate)") from None
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise InvalidRequest(f"field '{name}' contains a control character")
    return value


def _object(value: Any, where: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"{where} must be a JSON object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown field(s) in {where}: {', '.join(unknown)}")
    return value


def _string(
    obj: Mapping[str, Any], name: str, *, max_len: int, required: bool, min_len: int = 0
) -> str:
    if name not in obj:
        if required:
            raise InvalidRequest(f"field '{name}' is required")
        return ""
    value = obj[name]
    if not isinstance(value, str):
        raise InvalidRequest(f"field '{name}' must be a string")
    value = check_text(value.strip(), name)
    if len(value) < min_len:
        raise InvalidRequest(f"field '{name}' must not be empty")
    if len(value) > max_len:
        raise InvalidRequest(f"field '{name}' is longer than {max_len} characters")
    return value


def _bool(obj: Mapping[str, Any], name: str) -> bool:
    value = obj.get(name, False)
    if not isinstance(value, bool):
        raise InvalidRequest(f"field 'settings.{name}' must be true or false")
    return value


def create_meeting(body: bytes) -> CreateMeeting:
    obj = _object(
        parse_json(body), "the body", {"display_name", "max_participants", "settings", "region"}
    )
    name = _string(obj, "display_name", max_len=MAX_DISPLAY_NAME, required=True, min_len=1)
    maxp = obj.get("max_participants", DEFAULT_MAX_PARTICIPANTS)
    if not isinstance(maxp, int) or isinstance(maxp, bool):
        raise InvalidRequest("field 'max_participants' must be an integer")
    if not 1 <= maxp <= MAX_PARTICIPANTS_LIMIT:
        raise InvalidRequest(
            f"field 'max_participants' must be between 1 and {MAX_PARTICIPANTS_LIMIT}"
        )
    raw_settings = obj.get("settings", {})
    settings = _object(
        raw_settings, "'settings'", {"enable_e2e_encryption", "require_auth", "recording_enabled"}
    )
    meeting_settings = MeetingSettings(
        enable_e2e_encryption=_bool(settings, "enable_e2e_encryption"),
        require_auth=_bool(settings, "require_auth"),
        recording_enabled=_bool(settings, "recording_enabled"),
    )
    if meeting_settings.enable_e2e_encryption and meeting_settings.recording_enabled:
        # The servers never hold an E2EE meeting's media keys (docs/decisions.md, "An
        # end-to-end encrypted meeting is not recorded").
        raise InvalidRequest(
            "settings.recording_enabled cannot be true with settings.enable_e2e_encryption: "
            "the servers cannot record media they cannot decrypt"
        )
    if meeting_settings.enable_e2e_encryption and maxp > MAX_E2EE_PARTICIPANTS:
        raise InvalidRequest(
            f"field 'max_participants' must be at most {MAX_E2EE_PARTICIPANTS} with "
            "settings.enable_e2e_encryption (every leave re-keys every sender for everyone)"
        )
    return CreateMeeting(
        display_name=name,
        max_participants=maxp,
        settings=meeting_settings,
        region=_string(obj, "region", max_len=MAX_REGION, required=False),
    )


def token_request(body: bytes) -> TokenRequest:
    obj = _object(parse_json(body), "the body", {"grant_type", "client_id", "client_secret"})
    grant = obj.get("grant_type")
    if grant != "client_credentials":
        raise InvalidRequest("field 'grant_type' must be 'client_credentials'")
    return TokenRequest(
        client_id=_string(obj, "client_id", max_len=MAX_CREDENTIAL_FIELD, required=True, min_len=1),
        client_secret=_string(
            obj, "client_secret", max_len=MAX_CREDENTIAL_FIELD, required=True, min_len=1
        ),
    )


def join_meeting(body: bytes) -> JoinMeeting:
    if not body.strip():
        return JoinMeeting()
    obj = _object(
        parse_json(body),
        "the body",
        {"participant_name", "unreachable_controller", "may_publish", "role"},
    )
    may_publish = None
    if "may_publish" in obj:
        may_publish = frozenset(
            _names(obj["may_publish"], "may_publish", sorted(PUBLISH_KINDS), min_items=0)
        )
    role = _string(obj, "role", max_len=5, required=False)
    if role not in ("", Role.HOST.value, Role.GUEST.value):
        raise InvalidRequest("field 'role' must be 'host' or 'guest'")
    return JoinMeeting(
        participant_name=_string(
            obj, "participant_name", max_len=MAX_PARTICIPANT_NAME, required=False
        ),
        unreachable_controller=_string(
            obj, "unreachable_controller", max_len=MAX_HINT_LENGTH, required=False
        ),
        may_publish=may_publish,
        role=role,
    )


def _names(value: Any, name: str, allowed: Sequence[str], *, min_items: int) -> tuple[str, ...]:
    """A JSON list of distinct strings out of ``allowed``, at least ``min_items``."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidRequest(f"field '{name}' must be a list of strings")
    unknown = sorted({item for item in value if item not in allowed})
    if unknown:
        raise InvalidRequest(
            f"field '{name}' names unknown values: {', '.join(unknown)[:200]}",
            details={"allowed": ", ".join(allowed)},
        )
    if len(set(value)) != len(value):
        raise InvalidRequest(f"field '{name}' repeats a value")
    if len(value) < min_items:
        raise InvalidRequest(f"field '{name}' must name at least {min_items}")
    return tuple(value)


def moderate(body: bytes) -> Moderate:
    """The body of a moderation (docs/protocol.md §18.2)."""
    obj = _object(parse_json(body), "the body", {"actions", "message"})
    if "actions" not in obj:
        raise InvalidRequest("field 'actions' is required")
    return Moderate(
        actions=_names(obj["actions"], "actions", MODERATION_ACTIONS, min_items=1),
        message=_string(obj, "message", max_len=MAX_MODERATION_MESSAGE, required=False),
    )


def unreachable_controller(value: str | None) -> str:
    """The ``unreachable_controller`` query parameter of a meeting lookup ("" when absent)."""
    if value is None:
        return ""
    return _string(
        {"unreachable_controller": value},
        "unreachable_controller",
        max_len=MAX_HINT_LENGTH,
        required=False,
    )


def kick_ban(value: str | None, default_s: float) -> float:
    """The ``ban`` query parameter of a kick, in seconds (0: no ban): absent, ``false`` or
    ``0`` → 0; ``true`` → ``default_s``; a whole number of seconds up to :data:`MAX_BAN_S`."""
    if value is None or value in ("false", "0"):
        return 0.0
    if value == "true":
        return float(default_s)
    if not (value.isascii() and value.isdigit()) or len(value) > 9:
        raise InvalidRequest(
            f"query parameter 'ban' must be true, false or seconds (1 to {MAX_BAN_S})"
        )
    seconds = int(value)
    if seconds > MAX_BAN_S:
        raise InvalidRequest(f"query parameter 'ban' is more than {MAX_BAN_S} seconds")
    return float(seconds)
