"""Fuzz properties of the REST body parsers (``global_controller.schemas``): whatever bytes
arrive, a parser returns its request object, whose strings every store and protobuf can carry,
or raises ``InvalidRequest`` -- never anything else (which would be a 500)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from darktower.errors import InvalidRequest
from darktower.global_controller import schemas
from tests._fuzz import fuzz_settings

pytestmark = pytest.mark.fuzz

PARSERS: list[Callable[[bytes], Any]] = [
    schemas.create_meeting,
    schemas.token_request,
    schemas.join_meeting,
]
# Every code point, lone surrogates and control characters included: JSON escapes reach them.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
FIELD_NAMES = st.sampled_from(
    [
        "display_name",
        "max_participants",
        "settings",
        "region",
        "enable_e2e_encryption",
        "require_auth",
        "recording_enabled",
        "grant_type",
        "client_id",
        "client_secret",
        "participant_name",
    ]
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | ANY_TEXT
    | st.sampled_from(["client_credentials", "x", ""])
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(FIELD_NAMES | ANY_TEXT, inner, max_size=5)
    ),
    max_leaves=20,
)
VALID_BODIES = [
    {"display_name": "Standup", "max_participants": 5, "settings": {"require_auth": True}},
    {"grant_type": "client_credentials", "client_id": "abc", "client_secret": "s3cret"},
    {"participant_name": "Ann"},
]


def _check(parse: Callable[[bytes], Any], body: bytes) -> None:
    try:
        parsed = parse(body)
    except InvalidRequest as exc:
        assert exc.message
        return
    for value in attrs.asdict(parsed).values():
        if isinstance(value, str):
            value.encode("utf-8")  # storable and encodable as protobuf
            assert "\x00" not in value


@fuzz_settings()
@given(st.binary(max_size=300))
def test_random_bytes(body: bytes) -> None:
    for parse in PARSERS:
        _check(parse, body)


@fuzz_settings()
@given(JSON_VALUES)
def test_random_json(value: Any) -> None:
    body = json.dumps(value).encode()
    for parse in PARSERS:
        _check(parse, body)


@fuzz_settings()
@given(
    st.sampled_from(VALID_BODIES),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_mutated_valid_bodies(valid: dict[str, Any], flips: list[tuple[int, int]]) -> None:
    body = bytearray(json.dumps(valid).encode())
    for where, byte in flips:
        body[where % len(body)] = byte
    for parse in PARSERS:
        _check(parse, bytes(body))
