"""The contract's codec names and what this build of FFmpeg does with them
(docs/architecture.md §10)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from darktower.processing import (
    CODECS,
    Capabilities,
    _codecs,
    capabilities,
    decoder_name,
    encoder_name,
    normalize_codec,
)


@pytest.mark.parametrize(
    ("name", "codec"),
    [
        ("VP8", "VP8"),
        ("vp8", "VP8"),
        (" Vp9 ", "VP9"),
        ("H264", "H264"),
        ("h.264", "H264"),
        ("avc1", "H264"),
        ("AV1", "AV1"),
        ("av01", "AV1"),
        ("Opus", "Opus"),
        ("OPUS", "Opus"),
        ("aac", None),
        ("vp10", None),
        ("", None),
    ],
)
def test_codec_names_are_read_case_insensitively(name: str, codec: str | None) -> None:
    assert normalize_codec(name) == codec


def test_the_wheel_encodes_and_decodes_every_contract_codec() -> None:
    assert [encoder_name(c) for c in CODECS] == [
        "libvpx",
        "libvpx-vp9",
        "libx264",
        "libsvtav1",
        "libopus",
    ]
    # AV1 decodes with dav1d: FFmpeg's own "av1" decoder needs a hardware accelerator.
    assert [decoder_name(c) for c in CODECS] == ["vp8", "vp9", "h264", "libdav1d", "opus"]
    found = capabilities()
    assert found.encoders == found.decoders == frozenset(CODECS)
    assert capabilities() is found  # found once per process
    line = found.describe()
    assert "encodes VP8, VP9, H264, AV1, Opus" in line
    assert "missing" not in line


@pytest.fixture
def fresh_probe() -> Iterator[None]:
    """The cached answers are forgotten before and after: the test changes what is probed."""
    for cached in (_codecs.encoder_name, _codecs.decoder_name, _codecs.capabilities):
        cached.cache_clear()
    yield
    for cached in (_codecs.encoder_name, _codecs.decoder_name, _codecs.capabilities):
        cached.cache_clear()


def test_a_codec_that_does_not_open_is_missing(
    monkeypatch: pytest.MonkeyPatch, fresh_probe: None
) -> None:
    monkeypatch.setitem(_codecs._ENCODERS, "AV1", ("no-such-encoder", "libdav1d"))
    monkeypatch.setitem(_codecs._DECODERS, "H264", ("no-such-decoder",))
    assert encoder_name("AV1") is None  # libdav1d exists, but only as a decoder
    assert decoder_name("H264") is None
    found = capabilities()
    assert found.encoders == frozenset({"VP8", "VP9", "H264", "Opus"})
    assert found.decoders == frozenset({"VP8", "VP9", "AV1", "Opus"})
    assert found.describe().endswith("(missing: H264, AV1)")


def test_the_description_names_what_is_there() -> None:
    line = Capabilities(encoders=frozenset(), decoders=frozenset({"Opus"})).describe()
    assert "encodes none; decodes Opus" in line
