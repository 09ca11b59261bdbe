"""Fuzz properties of the transport's sans-IO parsers the network reaches: WebTransport stream
prefixes, capsules on the CONNECT stream, the extended CONNECT's headers. Each may only return
or raise its one documented error, and its buffers stay bounded."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from darktower.transport._config import MAX_CONNECT_PATH
from darktower.transport._session import BadConnect, parse_connect
from darktower.transport._wire import (
    CAPSULE_CLOSE_SESSION,
    MAX_CAPSULE_BUFFER,
    MAX_PREFIX,
    CapsuleError,
    CapsuleParser,
    PrefixKind,
    decode_close,
    encode_capsule,
    encode_close,
    parse_prefix,
    stream_prefix,
)
from tests._fuzz import fuzz_settings

pytestmark = pytest.mark.fuzz

VARINT_MAX = 2**62 - 1


@fuzz_settings()
@given(st.binary(max_size=40), st.booleans())
def test_parse_prefix_total(data: bytes, uni: bool) -> None:
    kind, session_id, length = parse_prefix(data, uni)
    if kind is PrefixKind.WEBTRANSPORT:
        assert 2 <= length <= min(len(data), MAX_PREFIX) and 0 <= session_id <= VARINT_MAX
    else:
        assert (session_id, length) == (0, 0)


@fuzz_settings()
@given(st.integers(0, VARINT_MAX), st.booleans(), st.binary(max_size=20))
def test_parse_prefix_round_trip(session_id: int, uni: bool, rest: bytes) -> None:
    prefix = stream_prefix(session_id, uni)
    assert parse_prefix(prefix + rest, uni) == (PrefixKind.WEBTRANSPORT, session_id, len(prefix))
    for cut in range(len(prefix)):
        assert parse_prefix(prefix[:cut], uni)[0] is PrefixKind.INCOMPLETE


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


capsule = st.one_of(
    st.builds(encode_close, st.integers(0, 2**32 - 1), st.text(max_size=50)),
    st.builds(encode_capsule, st.integers(0, VARINT_MAX), st.binary(max_size=64)),
    st.binary(max_size=64),  # garbage
)


@fuzz_settings()
@given(st.lists(capsule, max_size=8), st.lists(st.integers(0, 10_000), max_size=8))
def test_capsule_parser_bounded_and_total(capsules: list[bytes], cuts: list[int]) -> None:
    parser = CapsuleParser()
    data = b"".join(capsules)
    try:
        for chunk in _chunks(data, cuts):
            for got in parser.feed(chunk):
                assert got.type in CapsuleParser.KNOWN and len(got.value) <= MAX_CAPSULE_BUFFER
                if got.type == CAPSULE_CLOSE_SESSION:
                    try:
                        code, _reason = decode_close(got.value)
                    except CapsuleError:
                        continue
                    assert 0 <= code < 2**32
            assert len(parser._buffer) <= MAX_CAPSULE_BUFFER + MAX_PREFIX
    except CapsuleError:
        pass


@fuzz_settings()
@given(st.integers(0, 2**32 - 1), st.text(max_size=300), st.lists(st.integers(0, 2000)))
def test_close_capsule_round_trip_in_any_split(code: int, reason: str, cuts: list[int]) -> None:
    data = encode_capsule(0x17, b"grease" * 3) + encode_close(code, reason)
    parser = CapsuleParser()
    got = [c for chunk in _chunks(data, cuts) for c in parser.feed(chunk)]
    assert len(got) == 1 and decode_close(got[0].value)[0] == code


# --- the extended CONNECT -------------------------------------------------------------------
PSEUDO = [b":method", b":scheme", b":authority", b":path", b":protocol", b":status", b":x"]
GOOD = {
    b":method": b"CONNECT",
    b":scheme": b"https",
    b":authority": b"127.0.0.1:4433",
    b":path": b"/v1/signal?token=a.b-c_d",
    b":protocol": b"webtransport",
}
header_value = st.one_of(
    st.sampled_from([*GOOD.values(), b"", b"/", b"//[x", b"http", b"[::1]:1", b"a@b"]),
    st.binary(max_size=40),
    # paths about the size limit (cheap to draw: one repeated byte)
    st.integers(MAX_CONNECT_PATH - 2, MAX_CONNECT_PATH + 1).map(lambda n: b"/" + b"a" * n),
)
pseudo_header = st.tuples(st.sampled_from(PSEUDO), header_value)
plain_header = st.tuples(
    st.one_of(st.sampled_from([b"origin", b"user-agent"]), st.binary(max_size=12)), header_value
)


def _check(headers: list[tuple[bytes, bytes]]) -> None:
    try:
        request = parse_connect(headers)
    except BadConnect:
        return
    if request is not None:
        assert request.path.startswith("/") and len(request.path) <= MAX_CONNECT_PATH
        assert request.authority and "@" not in request.authority


@fuzz_settings()
@given(st.lists(st.one_of(pseudo_header, plain_header), max_size=10))
def test_parse_connect_total_on_any_headers(headers: list[tuple[bytes, bytes]]) -> None:
    _check(headers)


@fuzz_settings()
@given(
    st.permutations(list(GOOD.items())),
    st.integers(0, 5),
    st.lists(st.tuples(st.sampled_from(list(GOOD)), header_value), max_size=2),
    st.lists(plain_header, max_size=3),
)
def test_parse_connect_on_pseudo_header_sets(
    good: list[tuple[bytes, bytes]],
    drop: int,
    replace: list[tuple[bytes, bytes]],
    plain: list[tuple[bytes, bytes]],
) -> None:
    """Sets of the five pseudo-headers with one dropped, some replaced or repeated."""
    headers = [h for i, h in enumerate(good) if i != drop] + replace + plain
    _check(headers)
    if drop == 5 and not replace and all(n != b"origin" and n[:1] != b":" for n, _ in plain):
        request = parse_connect(good + plain)  # the five, well-formed: accepted
        assert request is not None and request.query == {"token": "a.b-c_d"}


path_char = st.sampled_from("abcXYZ019-._~!$&'()*+,;=:@%/")


@fuzz_settings()
@given(
    st.text(path_char, max_size=100),
    st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#"), max_size=100
    ),
)
def test_well_formed_connects_are_accepted(path: str, query: str) -> None:
    target = ("/" + path + ("?" + query if query else "")).encode()
    headers = [(k, target if k == b":path" else v) for k, v in GOOD.items()]
    request = parse_connect(headers)
    assert request is not None and request.path == "/" + path
