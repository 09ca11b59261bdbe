"""Fuzz properties of what E2EE takes from the network (docs/protocol.md §16): hostile frames
and headers into ``Keyring.decrypt``, hostile key shares into ``open_share`` and
``Keyring.add``, hostile key ids into ``parse_key_id``. Nothing but the documented outcome
comes out: a frame that really was sent, or None and a counted reason; ``E2EEError`` from
``open_share``; the bounds hold."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from darktower.e2ee import (
    DROP_REASONS,
    MAX_GENERATION,
    PENDING_MAX_BYTES,
    PENDING_MAX_FRAMES,
    E2EEError,
    KeyPair,
    Keyring,
    SenderKey,
    open_share,
    parse_key_id,
    seal_share,
)
from darktower.e2ee._frame import PREFIX
from darktower.frames import HEADER_SIZE, Frame, FrameError, FrameFlags, FrameHeader, FrameType
from tests._fuzz import fuzz_settings

pytestmark = pytest.mark.fuzz

SENDER = "sender"

headers = st.builds(
    FrameHeader,
    version=st.integers(0, 255),
    frame_type=st.sampled_from(FrameType),
    stream_id=st.uuids(),
    timestamp_us=st.integers(0, 2**64 - 1),
    sequence=st.integers(0, 2**64 - 1),
    flags=st.sampled_from([FrameFlags(i) for i in range(4)]),
)


@st.composite
def hostile_payloads(draw: st.DrawFn, near: int) -> bytes:
    """Random bytes, or a well-formed prefix (a generation near the sender's) before random
    bytes, or a random prefix before nothing."""
    kind = draw(st.sampled_from(["random", "prefix", "short"]))
    if kind == "random":
        return draw(st.binary(max_size=200))
    version = draw(st.sampled_from([1, 1, 1, 0, 2, 255]))
    generation = draw(
        st.one_of(
            st.integers(max(0, near - 6), min(MAX_GENERATION, near + 20)),
            st.integers(0, MAX_GENERATION),
        )
    )
    prefix = PREFIX.pack(version, generation, draw(st.integers(0, 2**64 - 1)))
    if kind == "short":
        return prefix + draw(st.binary(max_size=16))
    return prefix + draw(st.binary(min_size=16, max_size=300))


genuine = st.tuples(st.just("genuine"), st.binary(max_size=64))
operations = st.lists(
    st.one_of(
        genuine,
        genuine,
        st.tuples(st.just("tampered"), st.integers(0, 10_000), st.integers(1, 255)),
        st.tuples(st.just("hostile"), headers, st.data()),
        st.tuples(st.just("ratchet")),
        st.tuples(st.just("rotate"), st.booleans()),
        st.tuples(
            st.just("share"),
            st.one_of(st.integers(-2, 2**32), st.integers(0, 8)),
            st.one_of(st.binary(min_size=32, max_size=32), st.binary(min_size=30, max_size=33)),
        ),
        st.tuples(st.just("time"), st.floats(0, 3, allow_nan=False)),
        st.tuples(st.just("forget")),
    ),
    min_size=5,
    max_size=60,
)


@fuzz_settings()
@given(operations)
def test_the_keyring_only_ever_returns_what_was_sent(ops: list[tuple[Any, ...]]) -> None:
    key = SenderKey.new()
    keyring = Keyring()
    keyring.add(SENDER, 0, key.secret, 0.0)
    now = 0.0
    sent: list[tuple[bytes, bytes]] = []  # (wire header before encryption, plaintext)
    genuine: list[bytes] = []
    sequence = 0
    out: list[Frame] = []
    for op in ops:
        name = op[0]
        if name == "genuine":
            plaintext = bytes(op[1])
            header = FrameHeader(
                frame_type=FrameType.AUDIO,
                stream_id=uuid.UUID(int=7),
                timestamp_us=sequence,
                sequence=sequence,
                flags=FrameFlags.END_OF_FRAME,
            )
            sequence += 1
            wire = key.encrypt(header, plaintext)
            genuine.append(wire)
            sent.append((wire[:HEADER_SIZE], plaintext))
            result = keyring.decrypt(SENDER, Frame.from_wire(wire), now)
            if result is not None:
                out.append(result)
        elif name == "tampered" and genuine:
            changed = bytearray(genuine[op[1] % len(genuine)])
            changed[op[1] % len(changed)] ^= op[2]
            try:
                frame = Frame.from_wire(bytes(changed))
            except FrameError:
                continue  # the frame decoder's business, not the keyring's
            result = keyring.decrypt(SENDER, frame, now)
            if result is not None:
                out.append(result)
        elif name == "hostile":
            data: st.DataObject = op[2]
            payload = data.draw(hostile_payloads(key.generation))
            result = keyring.decrypt(SENDER, Frame.build(op[1], payload), now)
            if result is not None:
                out.append(result)
        elif name == "ratchet" and key.generation < MAX_GENERATION:
            key.ratchet()
        elif name == "rotate" and key.generation < MAX_GENERATION:
            key.rotate()
            if op[1]:
                out += keyring.add(SENDER, key.generation, key.secret, now)
        elif name == "share":
            out += keyring.add(SENDER, op[1], op[2], now)
        elif name == "time":
            now += op[1]
            keyring.expire(now)
            deadline = keyring.next_deadline()
            assert deadline is None or deadline > now
        elif name == "forget":
            keyring.forget(SENDER)
            keyring.add(SENDER, key.generation, key.secret, now)
        assert keyring.pending(SENDER) <= PENDING_MAX_FRAMES
        state = keyring._senders.get(SENDER)
        assert state is None or state.pending_bytes <= PENDING_MAX_BYTES
        assert set(keyring.drops) <= set(DROP_REASONS)
        assert len(keyring.generations(SENDER)) <= 5
    # Never garbled: every frame out is one that was sent, with its header and plaintext.
    for frame in out:
        raw = bytes(frame.raw)
        plaintext = raw[HEADER_SIZE:]
        matches = [
            header
            for header, text in sent
            if text == plaintext and header[:34] == raw[:34] and header[38:] == raw[38:HEADER_SIZE]
        ]
        assert matches, frame
    assert len(out) <= len(sent)
    for reason in sorted(keyring.drops):
        event(f"dropped {reason}")
    event(f"decrypted {min(len(out), 5)}+" if len(out) >= 5 else f"decrypted {len(out)}")


@fuzz_settings()
@given(
    ciphertext=st.one_of(st.binary(max_size=80), st.binary(min_size=60, max_size=60)),
    peer_public=st.one_of(st.binary(max_size=40), st.binary(min_size=32, max_size=32)),
    peer_id=st.text(max_size=20),
    own_id=st.text(max_size=20),
    generation=st.integers(-5, 2**33),
)
def test_open_share_refuses_hostile_shares(
    ciphertext: bytes, peer_public: bytes, peer_id: str, own_id: str, generation: int
) -> None:
    own = KeyPair.from_private_bytes(bytes(range(32)))
    with pytest.raises(E2EEError):
        open_share(own, own_id, peer_public, peer_id, generation, ciphertext)


@fuzz_settings()
@given(index=st.integers(0, 59), mask=st.integers(1, 255), generation=st.integers(0, 100))
def test_a_tampered_share_never_opens(index: int, mask: int, generation: int) -> None:
    alice = KeyPair.from_private_bytes(bytes(range(32)))
    bob = KeyPair.from_private_bytes(bytes(range(1, 33)))
    share = bytearray(seal_share(alice, "a", bob.public, "b", generation, bytes(32)))
    assert open_share(bob, "b", alice.public, "a", generation, bytes(share)) == bytes(32)
    share[index] ^= mask
    with pytest.raises(E2EEError):
        open_share(bob, "b", alice.public, "a", generation, bytes(share))


@fuzz_settings()
@given(st.text(max_size=12))
def test_parse_key_id_takes_decimal_generations_only(text: str) -> None:
    try:
        generation = parse_key_id(text)
    except E2EEError:
        return
    assert str(generation) == text and 0 <= generation <= MAX_GENERATION
