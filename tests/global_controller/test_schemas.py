from __future__ import annotations

import json

import pytest

from darktower.errors import InvalidRequest
from darktower.global_controller import MAX_BODY_BYTES, schemas


def _b(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_create_meeting_defaults_and_full() -> None:
    m = schemas.create_meeting(_b({"display_name": " Standup "}))
    assert m == schemas.CreateMeeting(display_name="Standup")
    m = schemas.create_meeting(
        _b(
            {
                "display_name": "Team Standup",
                "max_participants": 5,
                "settings": {"enable_e2e_encryption": True, "require_auth": True},
            }
        )
    )
    assert m.max_participants == 5
    assert m.settings == schemas.MeetingSettings(enable_e2e_encryption=True, require_auth=True)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"", "empty"),
        (b"{nope", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (_b([1]), "JSON object"),
        (_b({}), "'display_name' is required"),
        (_b({"display_name": ""}), "must not be empty"),
        (_b({"display_name": 3}), "must be a string"),
        (_b({"display_name": "x" * 201}), "longer than 200"),
        (_b({"display_name": "x", "max_participants": "9"}), "must be an integer"),
        (_b({"display_name": "x", "max_participants": True}), "must be an integer"),
        (_b({"display_name": "x", "max_participants": 0}), "between 1 and 1000"),
        (_b({"display_name": "x", "max_participants": 1001}), "between 1 and 1000"),
        (_b({"display_name": "x", "colour": 1}), "unknown field.*colour"),
        (_b({"display_name": "x", "settings": []}), "'settings' must be a JSON object"),
        (_b({"display_name": "x", "settings": {"require_auth": 1}}), "true or false"),
        (_b({"display_name": "x", "settings": {"mute": True}}), "unknown field.*mute"),
        (b" " * (MAX_BODY_BYTES + 1), "larger than"),
    ],
)
def test_create_meeting_errors_say_what_is_wrong(body: bytes, needle: str) -> None:
    with pytest.raises(InvalidRequest, match=needle):
        schemas.create_meeting(body)


def test_token_request() -> None:
    body = _b({"grant_type": "client_credentials", "client_id": "a", "client_secret": "b"})
    assert schemas.token_request(body) == schemas.TokenRequest("a", "b")
    with pytest.raises(InvalidRequest, match="grant_type"):
        schemas.token_request(
            _b({"grant_type": "password", "client_id": "a", "client_secret": "b"})
        )
    with pytest.raises(InvalidRequest, match="client_secret"):
        schemas.token_request(_b({"grant_type": "client_credentials", "client_id": "a"}))


def test_join_meeting_body_is_optional() -> None:
    assert schemas.join_meeting(b"") == schemas.JoinMeeting()
    assert schemas.join_meeting(_b({"participant_name": "Ann"})).participant_name == "Ann"
    with pytest.raises(InvalidRequest, match="unknown"):
        schemas.join_meeting(_b({"rank": "host"}))
    # the owner's grant (docs/protocol.md §18.2); who may set it is the service's check
    grant = schemas.join_meeting(_b({"role": "guest", "may_publish": ["audio", "screen"]}))
    assert grant.role == "guest" and grant.may_publish == {"audio", "screen"}
    for bad in ({"role": "admin"}, {"may_publish": ["audio", "audio"]}, {"may_publish": "audio"}):
        with pytest.raises(InvalidRequest):
            schemas.join_meeting(_b(bad))


# --- hostile bodies (docs/decisions.md: REST input) -------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        b"1" * 5000,  # int() refuses more than 4300 digits with a plain ValueError
        b'{"display_name": "x", "max_participants": ' + b"9" * 5000 + b"}",
        b"[" * 10_000,  # RecursionError inside the JSON decoder
        b'{"a":' * 3000,
    ],
)
def test_bodies_that_break_the_json_decoder_are_invalid_requests(body: bytes) -> None:
    for parse in (schemas.create_meeting, schemas.token_request, schemas.join_meeting):
        with pytest.raises(InvalidRequest, match="not valid JSON"):
            parse(body)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("\ud800", "not valid Unicode"),  # a lone surrogate: no database or protobuf takes it
        ("a\x00b", "control character"),  # PostgreSQL refuses NUL in text
        ("line\nbreak", "control character"),
        ("bell\x07", "control character"),
        ("c1\x85c1", "control character"),
    ],
)
def test_strings_must_be_storable_text(text: str, needle: str) -> None:
    with pytest.raises(InvalidRequest, match=f"display_name.*{needle}"):
        schemas.create_meeting(_b({"display_name": text}))
    with pytest.raises(InvalidRequest, match=f"participant_name.*{needle}"):
        schemas.join_meeting(_b({"participant_name": text}))
    with pytest.raises(InvalidRequest, match=f"client_id.*{needle}"):
        schemas.token_request(
            _b({"grant_type": "client_credentials", "client_id": text, "client_secret": "s"})
        )
    with pytest.raises(InvalidRequest, match=f"region.*{needle}"):
        schemas.create_meeting(_b({"display_name": "x", "region": text}))


def test_printable_unicode_is_kept() -> None:
    name = "Zoë 会議 \u200d🙂"
    assert schemas.create_meeting(_b({"display_name": name})).display_name == name
