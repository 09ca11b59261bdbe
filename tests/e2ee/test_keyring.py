"""The receiving side (docs/protocol.md §16.4): ratchet, pending frames, old generations."""

from __future__ import annotations

import pytest

from darktower.e2ee import (
    MAX_GENERATION_STEP,
    MAX_OLD_GENERATIONS,
    MAX_PLAINTEXT,
    OLD_KEY_GRACE_S,
    PENDING_MAX_AGE_S,
    PENDING_MAX_FRAMES,
    Keyring,
    SenderKey,
)
from darktower.frames import HEADER_SIZE, Frame

from ._helpers import VIDEO, flip, send


def _payloads(frames: list[Frame]) -> list[bytes]:
    return [bytes(frame.payload) for frame in frames]


def _joined(key: SenderKey, now: float = 0.0) -> Keyring:
    keyring = Keyring()
    assert keyring.add("alice", key.generation, key.secret, now) == []
    return keyring


def test_a_receiver_ratchets_forward_by_itself_after_a_join() -> None:
    key = SenderKey.new()
    keyring = _joined(key)
    assert keyring.decrypt("alice", send(key, b"g0"), 0.0) is not None
    key.ratchet()  # someone joined: the sender shares S' with the joiner only
    plain = keyring.decrypt("alice", send(key, b"g1"), 0.1)
    assert plain is not None and bytes(plain.payload) == b"g1"
    assert keyring.generations("alice") == [0, 1]
    assert keyring.drops == {}


def test_the_ratchet_reaches_256_generations_and_keeps_those_just_before() -> None:
    key = SenderKey.new()
    keyring = _joined(key)
    late = []
    for _ in range(MAX_GENERATION_STEP):
        key.ratchet()
        late.append(send(key, b"g%d" % key.generation, stream_id=VIDEO))
    # The newest frame first (another stream overtook the others): 256 steps in one go.
    plain = keyring.decrypt("alice", late[-1], 0.0)
    assert plain is not None and bytes(plain.payload) == b"g256"
    # The generations just before are held too (as many as the old generations' bound allows).
    held = keyring.generations("alice")
    assert held == list(range(256 - MAX_OLD_GENERATIONS, 257))
    assert keyring.decrypt("alice", late[-2], 0.0) is not None
    # An erased generation derived by ratchet: its frame waits (a share would override the
    # ratchet, docs/protocol.md §16.4) and is dropped when its time is over.
    assert keyring.decrypt("alice", late[0], 0.0) is None
    assert keyring.pending("alice") == 1
    keyring.expire(PENDING_MAX_AGE_S)
    assert keyring.drops == {"no_key": 1}


def test_the_ratchet_goes_no_further_than_256_generations() -> None:
    key = SenderKey.new()
    keyring = _joined(key)
    for _ in range(MAX_GENERATION_STEP + 1):
        key.ratchet()
    assert keyring.decrypt("alice", send(key, b"g257"), 0.0) is None
    assert keyring.generations("alice") == [0]
    assert keyring.pending("alice") == 1  # it waits for a share
    released = keyring.add("alice", key.generation, key.secret, 1.0)
    assert _payloads(released) == [b"g257"]


def test_a_fresh_key_after_a_leave_waits_and_is_released_in_order() -> None:
    key = SenderKey.new()
    keyring = _joined(key)
    in_flight = send(key, b"old key", 0)
    key.rotate()  # someone left: a fresh secret, shared through the MC
    frames = [send(key, b"new %d" % i, i + 1) for i in range(5)]
    assert [keyring.decrypt("alice", f, 0.1 * i) for i, f in enumerate(frames)] == [None] * 5
    assert keyring.pending("alice") == 5
    # A frame of the old key still in flight decrypts meanwhile.
    assert keyring.decrypt("alice", in_flight, 0.6) is not None
    released = keyring.add("alice", key.generation, key.secret, 0.7)
    assert _payloads(released) == [b"new %d" % i for i in range(5)]
    assert [f.sequence for f in released] == [1, 2, 3, 4, 5]
    assert keyring.pending("alice") == 0
    assert keyring.drops == {}
    assert keyring.decrypt("alice", send(key, b"next"), 0.8) is not None


def test_a_forged_first_frame_of_a_generation_does_not_keep_its_real_frames_out() -> None:
    key = SenderKey.new()
    keyring = _joined(key)
    key.ratchet()
    forged = flip(send(key, b"first"), HEADER_SIZE + 20)
    assert keyring.decrypt("alice", forged, 0.0) is None  # could be a fresh key: it waits
    plain = keyring.decrypt("alice", send(key, b"second"), 0.1)
    assert plain is not None and bytes(plain.payload) == b"second"
    # The forged frame waits on: a share would override the ratchet (docs/protocol.md §16.4);
    # none comes, and it is dropped when its time is over.
    assert keyring.pending("alice") == 1
    keyring.expire(PENDING_MAX_AGE_S)
    assert keyring.pending("alice") == 0
    assert keyring.drops == {"no_key": 1}


def test_waiting_frames_are_dropped_after_two_seconds() -> None:
    key = SenderKey.new()
    keyring = _joined(key)
    key.rotate()
    assert keyring.next_deadline() is None
    keyring.decrypt("alice", send(key, b"a"), 10.0)
    keyring.decrypt("alice", send(key, b"b"), 11.0)
    assert keyring.next_deadline() == 10.0 + PENDING_MAX_AGE_S
    keyring.expire(11.9)
    assert keyring.pending("alice") == 2
    keyring.expire(12.0)
    assert (keyring.pending("alice"), keyring.drops) == (1, {"no_key": 1})
    assert keyring.next_deadline() == 13.0
    # Without expire(), the next call for the sender enforces the bound itself.
    released = keyring.add("alice", key.generation, key.secret, 13.0)
    assert released == []
    assert keyring.drops == {"no_key": 2}
    assert keyring.next_deadline() is None


def test_at_most_64_frames_wait_the_oldest_dropped_first() -> None:
    key = SenderKey.new()
    keyring = _joined(key)
    key.rotate()
    for i in range(PENDING_MAX_FRAMES + 3):
        assert keyring.decrypt("alice", send(key, b"%d" % i, i), 0.0) is None
    assert keyring.pending("alice") == PENDING_MAX_FRAMES
    assert keyring.drops == {"no_key": 3}
    released = keyring.add("alice", key.generation, key.secret, 0.5)
    assert _payloads(released) == [b"%d" % i for i in range(3, PENDING_MAX_FRAMES + 3)]


def test_at_most_4_mib_wait() -> None:
    key = SenderKey.new()
    keyring = _joined(key)
    key.rotate()
    big = [send(key, bytes([i]) * MAX_PLAINTEXT, i) for i in range(5)]
    for frame in big:
        assert keyring.decrypt("alice", frame, 0.0) is None
    # Four frames of 1 MiB and 46 header bytes are over 4 MiB: three wait.
    assert keyring.pending("alice") == 3
    assert keyring.drops == {"no_key": 2}
    released = keyring.add("alice", key.generation, key.secret, 0.1)
    assert [f.sequence for f in released] == [2, 3, 4]


def test_an_older_generation_lasts_five_seconds_after_the_newer_is_used() -> None:
    key = SenderKey.new()
    keyring = _joined(key)
    old = [send(key, b"old %d" % i, i) for i in range(3)]
    key.rotate()
    assert keyring.add("alice", key.generation, key.secret, 1.0) == []
    # Not used yet: the old generation stays however long that takes.
    assert keyring.decrypt("alice", old[0], 100.0) is not None
    assert keyring.next_deadline() is None
    assert keyring.decrypt("alice", send(key, b"new"), 200.0) is not None
    assert keyring.next_deadline() == 200.0 + OLD_KEY_GRACE_S
    assert keyring.decrypt("alice", old[1], 204.9) is not None
    assert keyring.decrypt("alice", old[2], 205.0) is None
    assert keyring.drops == {"stale_key": 1}
    assert keyring.generations("alice") == [1]
    assert keyring.next_deadline() is None


def test_expire_erases_an_older_generation_on_time() -> None:
    key = SenderKey.new()
    keyring = _joined(key)
    key.ratchet()
    assert keyring.decrypt("alice", send(key, b"g1"), 3.0) is not None
    keyring.expire(7.9)
    assert keyring.generations("alice") == [0, 1]
    keyring.expire(8.0)
    assert keyring.generations("alice") == [1]


def test_at_most_four_older_generations_are_kept() -> None:
    key = SenderKey.new()
    keyring = _joined(key)
    frames = [send(key, b"g0")]
    for _ in range(6):
        key.rotate()
        keyring.add("alice", key.generation, key.secret, 0.0)
        frames.append(send(key, b"g%d" % key.generation))
    assert keyring.generations("alice") == [2, 3, 4, 5, 6]
    out = [keyring.decrypt("alice", frame, 0.0) for frame in frames]
    assert [bytes(f.payload) if f else None for f in out] == [
        None,
        None,
        b"g2",
        b"g3",
        b"g4",
        b"g5",
        b"g6",
    ]
    assert keyring.drops == {"stale_key": 2}


def test_a_joiner_holding_only_the_current_key_cannot_decrypt_the_one_before() -> None:
    key = SenderKey.new()
    before = [send(key, b"before the join %d" % i, i) for i in range(3)]
    key.ratchet()  # the joiner arrives: it gets S at g = 1 only
    joiner = Keyring()
    # One old frame reaches the joiner before its share, two after.
    assert joiner.decrypt("alice", before[0], 0.0) is None
    released = joiner.add("alice", key.generation, key.secret, 0.1)
    assert released == []
    assert joiner.decrypt("alice", before[1], 0.2) is None
    assert joiner.decrypt("alice", before[2], 0.3) is None
    assert joiner.drops == {"stale_key": 3}
    assert joiner.decrypt("alice", send(key, b"after"), 0.4) is not None


def test_frames_before_any_key_wait_for_the_first_share() -> None:
    key = SenderKey.new()
    keyring = Keyring()
    assert keyring.decrypt("alice", send(key, b"early", 0), 0.0) is None
    assert keyring.generations("alice") == []
    assert _payloads(keyring.add("alice", 0, key.secret, 0.5)) == [b"early"]


def test_shares_the_keyring_ignores() -> None:
    key = SenderKey.new()
    for _ in range(3):
        key.rotate()
    keyring = _joined(key)
    # The same secret again (a resume): nothing happens, nothing is counted.
    assert keyring.add("alice", key.generation, key.secret, 0.0) == []
    assert keyring.drops == {}
    # Another secret for the generation held, an older generation, a secret of another size.
    keyring.add("alice", key.generation, bytes(32), 0.0)
    keyring.add("alice", key.generation - 1, bytes(32), 0.0)
    keyring.add("alice", key.generation + 1, bytes(31), 0.0)
    keyring.add("alice", 2**32, bytes(32), 0.0)
    assert keyring.drops == {"bad_share": 4}
    assert keyring.generations("alice") == [3]
    assert keyring.decrypt("alice", send(key, b"still fine"), 0.0) is not None


def test_senders_are_independent_and_forget_drops_what_waits() -> None:
    alice, bob = SenderKey.new(), SenderKey.new()
    keyring = _joined(alice)
    keyring.add("bob", 0, bob.secret, 0.0)
    # Bob's frame under Alice's name does not decrypt: the sender picks the keys.
    assert keyring.decrypt("alice", send(bob, b"bob"), 0.0) is None
    assert keyring.drops == {"auth_failed": 1}
    alice.rotate()
    keyring.decrypt("alice", send(alice, b"waits"), 0.0)
    keyring.forget("alice")
    assert keyring.generations("alice") == []
    assert keyring.drops == {"auth_failed": 1, "no_key": 1}
    assert keyring.next_deadline() is None
    assert keyring.decrypt("bob", send(bob, b"bob"), 0.0) is not None


def test_a_decrypted_frame_owns_its_bytes() -> None:
    key = SenderKey.new()
    keyring = _joined(key)
    wire = bytearray(key.encrypt(send(key, b"").header, b"payload"))
    frame = Frame.from_wire(wire)
    plain = keyring.decrypt("alice", frame, 0.0)
    assert plain is not None
    wire[HEADER_SIZE:] = bytes(len(wire) - HEADER_SIZE)
    assert bytes(plain.payload) == b"payload"
    assert plain.payload_length == 7 and len(plain.raw) == HEADER_SIZE + 7


@pytest.mark.parametrize("rotations", [1, 3])
def test_rotation_under_load_loses_no_frame(rotations: int) -> None:
    # Frames of two streams, interleaved, across rotations whose shares arrive 30 frames late:
    # every frame decrypts, either at once or released by its share.
    key = SenderKey.new()
    keyring = _joined(key)
    delivered: list[int] = []
    shares: list[tuple[int, int, bytes]] = []  # (deliver at frame, generation, secret)
    sequence = 0
    for step in range(rotations + 1):
        if step:
            key.rotate()
            shares.append((sequence + 30, key.generation, key.secret))
        for _ in range(50):
            stream = VIDEO if sequence % 3 else None
            kwargs = {"stream_id": stream} if stream else {}
            frame = send(key, b"%d" % sequence, sequence, **kwargs)
            now = sequence * 0.01
            for _, generation, secret in [s for s in shares if s[0] == sequence]:
                released = keyring.add("alice", generation, secret, now)
                delivered += [int(bytes(f.payload)) for f in released]
            plain = keyring.decrypt("alice", frame, now)
            if plain is not None:
                delivered.append(int(bytes(plain.payload)))
            sequence += 1
    assert sorted(delivered) == list(range(sequence))
    assert keyring.drops == {}
