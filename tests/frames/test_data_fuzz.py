"""Fuzz properties of the data message parser the network reaches (docs/protocol.md §18.4):
random bytes and mutated valid datagrams. Nothing but a ``DataMessageError`` ever comes out,
its reason is one of the documented ones, and what decodes encodes back to the same bytes
(reserved bits aside)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from darktower.frames import (
    DATA_HEADER_SIZE,
    MAX_DATA_PAYLOAD,
    DataMessageError,
    decode_data,
    encode_data,
    is_padding,
)
from tests._fuzz import fuzz_settings

pytestmark = pytest.mark.fuzz

REASONS = {"short", "version", "kind", "too_large"}


def _check(data: bytes) -> None:
    try:
        message = decode_data(data)
    except DataMessageError as exc:
        assert exc.reason in REASONS
        if is_padding(data):
            assert exc.reason in {"short", "version"}
        return
    assert not is_padding(data)
    assert len(message.payload) <= MAX_DATA_PAYLOAD
    assert message.payload == data[DATA_HEADER_SIZE:]
    normalized = data[:2] + bytes([data[2] & 1, 0]) + data[4:]
    assert encode_data(message.payload, message.participant_id, private=message.private) == (
        normalized
    )


@fuzz_settings()
@given(st.binary(max_size=DATA_HEADER_SIZE + MAX_DATA_PAYLOAD + 40))
def test_data_parser_on_random_bytes(data: bytes) -> None:
    _check(data)


@fuzz_settings()
@given(
    st.binary(max_size=MAX_DATA_PAYLOAD),
    st.one_of(st.none(), st.uuids()),
    st.lists(
        st.tuples(
            st.sampled_from(["set", "insert", "delete", "truncate", "extend"]),
            st.integers(min_value=0, max_value=2000),
            st.integers(min_value=0, max_value=255),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_data_parser_on_mutated_messages(
    payload: bytes, who: object, edits: list[tuple[str, int, int]]
) -> None:
    wire = bytearray(encode_data(payload, who))  # type: ignore[arg-type]
    for kind, at, byte in edits:
        at %= len(wire) + 1
        if kind == "set" and at < len(wire):
            wire[at] = byte
        elif kind == "insert":
            wire.insert(at, byte)
        elif kind == "delete" and at < len(wire):
            del wire[at]
        elif kind == "truncate":
            del wire[at:]
        elif kind == "extend":
            wire.extend(bytes([byte]) * at)
    _check(bytes(wire))
