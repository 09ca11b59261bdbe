"""The receiving side against a hostile network and a hostile ex-participant (docs/protocol.md
§16.4): many joins unseen, a kicked participant's forgeries, generations a share skipped,
replays, and the waiting frames of all senders together."""

from __future__ import annotations

import pytest

from darktower.e2ee import (
    KEYRING_PENDING_MAX_BYTES,
    KEYRING_PENDING_MAX_FRAMES,
    MAX_GENERATION_STEP,
    MAX_PLAINTEXT,
    OLD_KEY_GRACE_S,
    PENDING_MAX_FRAMES,
    REPLAY_WINDOW,
    Keyring,
    SenderKey,
    _sender,
)
from darktower.e2ee._sender import MAX_CANDIDATES

from ._helpers import send


def _joined(key: SenderKey, sender: str = "alice") -> Keyring:
    keyring = Keyring()
    assert keyring.add(sender, key.generation, key.secret, 0.0) == []
    return keyring


def test_a_receiver_that_saw_no_frames_during_17_joins_still_decrypts() -> None:
    key = SenderKey.new()
    keyring = _joined(key)
    for _ in range(17):
        key.ratchet()
    plain = keyring.decrypt("alice", send(key, b"after 17 joins"), 1.0)
    assert plain is not None and bytes(plain.payload) == b"after 17 joins"
    assert keyring.drops == {}


def test_frames_far_ahead_cost_one_chain_derivation_and_bounded_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = 0
    real = _sender.ratchet_secret

    def counted(secret: bytes) -> bytes:
        nonlocal calls
        calls += 1
        return real(secret)

    monkeypatch.setattr(_sender, "ratchet_secret", counted)
    key = SenderKey.new()
    keyring = _joined(key)
    forger = SenderKey.new()  # not the sender's chain: nothing verifies
    for i in range(300):
        generation = MAX_GENERATION_STEP - (i * 7) % 50
        forged = SenderKey(forger.secret, generation)
        assert keyring.decrypt("alice", send(forged, b"x", i), 0.0) is None
    assert calls == MAX_GENERATION_STEP  # the chain, once
    state = keyring._senders["alice"]
    assert len(state.chain) == MAX_GENERATION_STEP
    assert len(state.candidates) <= MAX_CANDIDATES
    assert keyring.pending("alice") == PENDING_MAX_FRAMES


def _forge_scenario(forged_generation: int) -> tuple[Keyring, SenderKey, SenderKey]:
    """A held g0, which X held too. X is kicked, A rotates to a fresh g1 (its share on the way);
    X ratchets g0 to ``forged_generation`` and the MH injects a frame under it."""
    a = SenderKey.new()
    keyring = _joined(a, "A")
    assert keyring.decrypt("A", send(a, b"g0", 0), 0.1) is not None
    forger = SenderKey(a.secret, 0)
    for _ in range(forged_generation):
        forger.ratchet()
    forged = keyring.decrypt("A", send(forger, b"forged", 1), 0.2)
    assert forged is not None and bytes(forged.payload) == b"forged"  # the ratchet verifies
    a.rotate()
    waiting = [keyring.decrypt("A", send(a, b"real %d" % i, 2 + i), 0.3) for i in range(2)]
    assert waiting == [None, None]
    return keyring, a, forger


@pytest.mark.parametrize("forged_generation", [1, 16])
def test_a_share_overrides_a_generation_a_forged_frame_derived(forged_generation: int) -> None:
    keyring, a, forger = _forge_scenario(forged_generation)
    assert keyring.pending("A") == 2  # A's real frames wait: a share overrides the ratchet
    released = keyring.add("A", 1, a.secret, 0.4)
    assert [bytes(f.payload) for f in released] == [b"real 0", b"real 1"]
    assert keyring.generations("A") == [0, 1] if forged_generation == 1 else [1]
    assert keyring.drops == {"auth_failed": 1}  # the forged generation, discarded
    plain = keyring.decrypt("A", send(a, b"real 2", 9), 0.5)
    assert plain is not None and bytes(plain.payload) == b"real 2"
    # The forged key is gone: another frame under it does not decrypt.
    assert keyring.decrypt("A", send(forger, b"again", 10), 0.6) is None


def test_a_share_consistent_with_the_derived_generations_keeps_them() -> None:
    key = SenderKey.new()
    keyring = _joined(key)
    key.ratchet()
    shared = SenderKey(key.secret, key.generation)
    key.ratchet()
    key.ratchet()
    assert keyring.decrypt("alice", send(key, b"g3", 0), 0.0) is not None
    # A late share of g1 (the real one): the derived g2 and g3 follow from it.
    assert keyring.add("alice", 1, shared.secret, 0.1) == []
    assert keyring.generations("alice") == [0, 1, 2, 3]
    assert keyring.decrypt("alice", send(key, b"g3 again", 1), 0.2) is not None
    assert keyring.drops == {}
    # Older than a shared generation: refused, as before.
    keyring.add("alice", 0, bytes(32), 0.3)
    assert keyring.drops == {"bad_share": 1}


def test_frames_of_a_ratcheted_generation_a_newer_share_skipped_still_decrypt() -> None:
    a = SenderKey.new()
    keyring = _joined(a)
    a.ratchet()  # a join: g1, derived by the receiver itself
    in_flight = [send(a, b"g1 %d" % i, i) for i in range(3)]
    a.rotate()  # a leave: a fresh g2, whose share arrives before the g1 frames
    assert keyring.add("alice", 2, a.secret, 0.1) == []
    plain = keyring.decrypt("alice", in_flight[0], 0.15)
    assert plain is not None and bytes(plain.payload) == b"g1 0"
    assert keyring.decrypt("alice", send(a, b"g2", 5), 0.2) is not None
    # Within the old-key window still; then erased.
    assert keyring.decrypt("alice", in_flight[1], 0.2 + OLD_KEY_GRACE_S - 0.01) is not None
    assert keyring.decrypt("alice", in_flight[2], 0.2 + OLD_KEY_GRACE_S) is None
    assert keyring.drops == {"stale_key": 1}
    assert keyring.generations("alice") == [2]


def test_a_skipped_generation_that_was_not_a_ratchet_is_stale() -> None:
    a = SenderKey.new()
    keyring = _joined(a)
    a.rotate()
    lost = send(a, b"g1, its share lost", 0)
    a.rotate()
    keyring.add("alice", 2, a.secret, 0.1)
    assert keyring.decrypt("alice", lost, 0.2) is None
    assert keyring.drops == {"stale_key": 1}


def test_a_frame_decrypts_once() -> None:
    key = SenderKey.new()
    keyring = _joined(key)
    frames = [send(key, b"%d" % i, i) for i in range(REPLAY_WINDOW + 2)]
    assert keyring.decrypt("alice", frames[5], 0.0) is not None
    assert keyring.decrypt("alice", frames[5], 0.0) is None  # the same again
    assert keyring.decrypt("alice", frames[3], 0.0) is not None  # out of order: fine
    assert keyring.decrypt("alice", frames[3], 0.0) is None
    assert keyring.drops == {"replayed": 2}
    assert keyring.decrypt("alice", frames[-1], 0.0) is not None  # counter 1025
    # Counter 1 is 1,024 behind the newest: too old to tell, dropped; 2 is within the window.
    assert keyring.decrypt("alice", frames[1], 0.0) is None
    assert keyring.decrypt("alice", frames[2], 0.0) is not None
    assert keyring.drops == {"replayed": 3}


def test_a_replayed_frame_waiting_for_its_key_decrypts_once() -> None:
    key = SenderKey.new()
    keyring = _joined(key)
    key.rotate()
    frame = send(key, b"once")
    keyring.decrypt("alice", frame, 0.0)
    keyring.decrypt("alice", frame, 0.0)
    assert len(keyring.add("alice", 1, key.secret, 0.1)) == 1
    assert keyring.drops == {"replayed": 1}


def test_waiting_frames_are_bounded_across_senders() -> None:
    keyring = Keyring()
    senders = KEYRING_PENDING_MAX_FRAMES // PENDING_MAX_FRAMES + 1
    for n in range(senders):
        key = SenderKey.new()
        for i in range(PENDING_MAX_FRAMES):
            assert keyring.decrypt(f"p{n}", send(key, b"%d" % i, i), 0.01 * n) is None
    assert sum(keyring.pending(f"p{n}") for n in range(senders)) == KEYRING_PENDING_MAX_FRAMES
    assert keyring.pending("p0") == 0  # the oldest went first
    assert keyring.drops == {"no_key": PENDING_MAX_FRAMES}


def test_waiting_bytes_are_bounded_across_senders() -> None:
    keyring = Keyring()
    per_sender = 3  # three 1 MiB frames fit under a sender's 4 MiB
    senders = KEYRING_PENDING_MAX_BYTES // (per_sender * MAX_PLAINTEXT) + 1
    for n in range(senders):
        key = SenderKey.new()
        for i in range(per_sender):
            keyring.decrypt(f"p{n}", send(key, bytes(MAX_PLAINTEXT), i), float(n))
    total = sum(keyring.pending(f"p{n}") for n in range(senders))
    assert total * MAX_PLAINTEXT <= KEYRING_PENDING_MAX_BYTES
    assert keyring.pending("p0") < per_sender and keyring.pending(f"p{senders - 1}") == per_sender
    assert keyring.drops["no_key"] == senders * per_sender - total > 0


def test_after_a_forgery_is_overridden_the_older_key_retires_on_time() -> None:
    a = SenderKey.new()
    keyring = _joined(a, "A")
    old = [send(a, b"g0 %d" % i, i) for i in range(2)]
    forger = SenderKey(a.secret, 0)
    forger.ratchet()
    forger.ratchet()
    assert keyring.decrypt("A", send(forger, b"forged g2"), 0.1) is not None
    a.rotate()
    keyring.add("A", 1, a.secret, 1.0)
    assert keyring.generations("A") == [0, 1]
    assert keyring.decrypt("A", send(a, b"g1"), 2.0) is not None
    assert keyring.decrypt("A", old[0], 2.0 + OLD_KEY_GRACE_S - 0.01) is not None
    assert keyring.decrypt("A", old[1], 2.0 + OLD_KEY_GRACE_S) is None
    assert keyring.generations("A") == [1]
