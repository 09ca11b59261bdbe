"""Pure wire helpers: capsules (fed whole and byte by byte), error-code mapping, prefixes."""

from __future__ import annotations

import pytest
from aioquic.buffer import encode_uint_var

from darktower.transport._wire import (
    CAPSULE_CLOSE_SESSION,
    MAX_CAPSULE_BUFFER,
    WT_ERROR_FIRST,
    Capsule,
    CapsuleError,
    CapsuleParser,
    PrefixKind,
    code_from_h3,
    code_to_h3,
    decode_close,
    encode_capsule,
    encode_close,
    parse_prefix,
    stream_prefix,
)

GREASE = 0x29 * 7 + 0x17  # a reserved capsule type: must be skipped


def _feed(parser: CapsuleParser, data: bytes, split: bool) -> list[Capsule]:
    if not split:
        return parser.feed(data)
    out: list[Capsule] = []
    for i in range(len(data)):
        out += parser.feed(data[i : i + 1])
    return out


@pytest.mark.parametrize("split", [False, True])
def test_close_capsule_after_unknown_ones(split: bool) -> None:
    data = encode_capsule(GREASE, b"g" * 300) + encode_close(4321, "bye é") + encode_capsule(7, b"")
    capsules = _feed(CapsuleParser(), data, split)
    assert [c.type for c in capsules] == [CAPSULE_CLOSE_SESSION]
    assert decode_close(capsules[0].value) == (4321, "bye é")


def test_unknown_capsule_payload_is_skipped_not_buffered() -> None:
    parser = CapsuleParser()
    huge = 10 * MAX_CAPSULE_BUFFER
    assert parser.feed(encode_uint_var(GREASE) + encode_uint_var(huge)) == []
    for _ in range(10):
        assert parser.feed(b"x" * MAX_CAPSULE_BUFFER) == []
    assert parser.feed(encode_close(1, "")) == [Capsule(CAPSULE_CLOSE_SESSION, b"\0\0\0\1")]


def test_oversized_known_capsule_is_an_error() -> None:
    data = encode_uint_var(CAPSULE_CLOSE_SESSION) + encode_uint_var(MAX_CAPSULE_BUFFER + 1)
    with pytest.raises(CapsuleError):
        CapsuleParser().feed(data)


def test_close_reason_is_capped() -> None:
    (capsule,) = CapsuleParser().feed(encode_close(1, "r" * 5000))
    assert decode_close(capsule.value) == (1, "r" * 1024)


@pytest.mark.parametrize("code", [0, 1, 0x1D, 0x1E, 0x1F, 255, 4321, 0xFFFFFFFF])
def test_error_code_mapping_round_trips(code: int) -> None:
    h3 = code_to_h3(code)
    assert code_from_h3(h3) == code
    assert (h3 - WT_ERROR_FIRST) % 0x1F != 0x1E  # never lands on a reserved codepoint


def test_error_codes_outside_the_range() -> None:
    assert code_from_h3(0x100) is None
    assert code_from_h3(code_to_h3(0x1D) + 1) is None  # the reserved codepoint after 0x1d
    with pytest.raises(ValueError):
        code_to_h3(1 << 32)


@pytest.mark.parametrize("uni", [False, True])
def test_stream_prefixes(uni: bool) -> None:
    prefix = stream_prefix(1234, uni)
    assert parse_prefix(prefix + b"data", uni) == (PrefixKind.WEBTRANSPORT, 1234, len(prefix))
    assert parse_prefix(prefix[:1], uni)[0] is PrefixKind.INCOMPLETE
    assert parse_prefix(b"\x00\x04", uni)[0] is PrefixKind.OTHER  # control stream / DATA frame
