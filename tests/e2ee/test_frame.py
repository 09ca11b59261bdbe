"""Frame encryption (docs/protocol.md §16.1): round trips, nonces, associated data."""

from __future__ import annotations

import struct

import attrs
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from darktower.e2ee import (
    MAX_GENERATION,
    MAX_PLAINTEXT,
    OVERHEAD,
    E2EEError,
    Keyring,
    SenderKey,
    ratchet_secret,
)
from darktower.e2ee._frame import GenerationKeys
from darktower.e2ee._primitives import hkdf
from darktower.frames import HEADER_SIZE, Frame, FrameFlags, FrameType

from ._helpers import AUDIO, VIDEO, flip, header, send


def _keyring(key: SenderKey, sender: str = "alice") -> Keyring:
    keyring = Keyring()
    assert keyring.add(sender, key.generation, key.secret, 0.0) == []
    return keyring


@pytest.mark.parametrize("length", [0, 1, 1200, 30_000, MAX_PLAINTEXT])
def test_a_frame_round_trips(length: int) -> None:
    key = SenderKey.new()
    payload = bytes(i % 251 for i in range(length))
    sent = header(7, stream_id=VIDEO, frame_type=FrameType.VIDEO_KEY)
    frame = send(key, payload, 7, stream_id=VIDEO, frame_type=FrameType.VIDEO_KEY)
    assert frame.payload_length == length + OVERHEAD == len(frame.payload)
    assert frame.payload[0] == 1
    assert payload not in bytes(frame.payload) or length < 8
    plain = _keyring(key).decrypt("alice", frame, 0.0)
    assert plain is not None
    assert bytes(plain.payload) == payload
    assert plain.header == attrs.evolve(sent, payload_length=length)


def test_a_plaintext_over_the_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="over the limit"):
        SenderKey.new().encrypt(header(), bytes(MAX_PLAINTEXT + 1))


def test_the_prefix_and_the_header_on_the_wire() -> None:
    key = SenderKey(bytes(32), 5, counter=9)
    wire = key.encrypt(header(3, flags=FrameFlags.DISCARDABLE), b"abc")
    # The header's payload length is the encrypted one, END_OF_FRAME is set (one part).
    expected = attrs.evolve(
        header(3),
        payload_length=3 + OVERHEAD,
        flags=FrameFlags.DISCARDABLE | FrameFlags.END_OF_FRAME,
    )
    assert wire[:HEADER_SIZE] == expected.encode()
    assert struct.unpack_from(">BIQ", wire, HEADER_SIZE) == (1, 5, 9)
    assert len(wire) == HEADER_SIZE + 3 + OVERHEAD
    assert key.counter == 10


def test_the_counter_is_per_generation_across_streams_and_nonces_never_repeat() -> None:
    key = SenderKey.new()
    seen: set[tuple[int, bytes]] = set()
    counters = []
    for generation_step in range(3):
        for i in range(20):
            stream = AUDIO if i % 2 else VIDEO
            frame = send(key, b"x", i, stream_id=stream)
            _, generation, counter = struct.unpack_from(">BIQ", frame.payload)
            counters.append((generation, counter))
            nonce = GenerationKeys(key.secret, key.generation).nonce(counter)
            assert (generation, nonce) not in seen
            seen.add((generation, nonce))
        if generation_step == 0:
            key.ratchet()
        else:
            key.rotate()
    # 0, 1, 2, ... over both streams, restarting with each generation.
    assert counters == [(g, c) for g in range(3) for c in range(20)]


def test_the_nonce_is_the_salt_xor_the_counter() -> None:
    secret = bytes(range(32))
    salt = hkdf(secret, b"darktower e2ee v1 frame salt", 12)
    keys = GenerationKeys(secret, 0)
    for counter in (0, 1, 0x0102030405060708, 2**64 - 1):
        expected = salt[:4] + bytes(
            a ^ b for a, b in zip(salt[4:], counter.to_bytes(8, "big"), strict=True)
        )
        assert keys.nonce(counter) == expected


def test_hkdf_is_rfc_5869_with_a_zero_salt() -> None:
    for length in (12, 16, 32, 33, 64, 100):
        reference = HKDF(hashes.SHA256(), length, bytes(32), b"info").derive(b"s" * 32)
        assert hkdf(b"s" * 32, b"info", length) == reference


def test_ratchet_and_rotate_move_to_the_next_generation() -> None:
    key = SenderKey.new()
    first = key.secret
    key.ratchet()
    assert (key.generation, key.secret) == (1, ratchet_secret(first))
    key.rotate()
    assert key.generation == 2
    assert key.secret not in (first, ratchet_secret(first), ratchet_secret(ratchet_secret(first)))
    assert len(key.secret) == 32
    assert key.counter == 0


def test_the_last_generation_goes_no_further() -> None:
    key = SenderKey(bytes(32), MAX_GENERATION)
    with pytest.raises(E2EEError):
        key.ratchet()
    with pytest.raises(E2EEError):
        key.rotate()
    assert key.generation == MAX_GENERATION
    with pytest.raises(E2EEError):
        SenderKey(bytes(32), MAX_GENERATION + 1)
    with pytest.raises(E2EEError):
        SenderKey(bytes(31))


def test_the_last_counter_is_the_last_frame_of_a_generation() -> None:
    key = SenderKey(bytes(32), 0, counter=2**64 - 1)
    send(key, b"last")
    with pytest.raises(E2EEError, match="rotate"):
        send(key, b"one too many")


# Every header byte but the version (the frame decoder refuses another) and the payload length
# (it must say what the buffer holds): frame type, stream id, timestamp, sequence, flags
# (reserved bits too) and the reserved bytes are all in the associated data.
CHANGEABLE = [offset for offset in range(1, HEADER_SIZE) if not 34 <= offset < 38]


@pytest.mark.parametrize("offset", CHANGEABLE)
def test_any_changed_header_byte_fails_one_frame(offset: int) -> None:
    key = SenderKey.new()
    keyring = _keyring(key)
    frames = [send(key, b"frame %d" % i, i) for i in range(3)]
    assert keyring.decrypt("alice", frames[0], 0.0) is not None
    assert keyring.decrypt("alice", flip(frames[1], offset), 0.0) is None
    assert keyring.drops == {"auth_failed": 1}
    plain = keyring.decrypt("alice", frames[2], 0.0)
    assert plain is not None and bytes(plain.payload) == b"frame 2"


@pytest.mark.parametrize("offset", [HEADER_SIZE + 1, HEADER_SIZE + 5, HEADER_SIZE + 12])
def test_a_changed_prefix_fails_one_frame(offset: int) -> None:
    # The generation or the counter changed: another key, or another nonce, and the prefix
    # is in the associated data. A generation changed within the ratchet's reach goes pending.
    key = SenderKey.new()
    keyring = _keyring(key)
    assert keyring.decrypt("alice", flip(send(key, b"x"), offset), 0.0) is None
    if offset == HEADER_SIZE + 1:
        assert keyring.drops == {} and keyring.pending("alice") == 1
    else:
        assert keyring.drops == {"auth_failed": 1}
    assert keyring.decrypt("alice", send(key, b"y"), 0.0) is not None


def test_a_flipped_ciphertext_bit_drops_one_frame() -> None:
    key = SenderKey.new()
    keyring = _keyring(key)
    frames = [send(key, b"payload %d" % i, i) for i in range(4)]
    out = [keyring.decrypt("alice", frames[0], 0.0)]
    out.append(keyring.decrypt("alice", flip(frames[1], HEADER_SIZE + 13 + 2, 0x10), 0.0))
    out.append(keyring.decrypt("alice", flip(frames[2], len(frames[2].raw) - 1), 0.0))  # tag
    out.append(keyring.decrypt("alice", frames[3], 0.0))
    assert [bytes(f.payload) if f else None for f in out] == [
        b"payload 0",
        None,
        None,
        b"payload 3",
    ]
    assert keyring.drops == {"auth_failed": 2}


def test_malformed_payloads_are_dropped() -> None:
    key = SenderKey.new()
    keyring = _keyring(key)
    good = send(key, b"hello")
    short = Frame.build(good.header, bytes(good.payload)[: OVERHEAD - 1])
    version = flip(good, HEADER_SIZE, 0x03)
    assert keyring.decrypt("alice", short, 0.0) is None
    assert keyring.decrypt("alice", version, 0.0) is None
    assert keyring.drops == {"malformed": 2}
    assert keyring.decrypt("alice", good, 0.0) is not None
