"""Key shares and safety numbers (docs/protocol.md §16.2, §16.5)."""

from __future__ import annotations

import hashlib
import re

import pytest

from darktower.e2ee import (
    E2EEError,
    KeyPair,
    fingerprint,
    key_id,
    open_share,
    parse_key_id,
    seal_share,
)

ALICE, BOB, CAROL = "alice-id", "bob-id", "carol-id"


@pytest.fixture
def pairs() -> tuple[KeyPair, KeyPair, KeyPair]:
    return KeyPair.generate(), KeyPair.generate(), KeyPair.generate()


def test_a_share_round_trips(pairs: tuple[KeyPair, KeyPair, KeyPair]) -> None:
    alice, bob, _ = pairs
    secret = bytes(range(32))
    share = seal_share(alice, ALICE, bob.public, BOB, 7, secret)
    assert len(share) == 60
    assert secret not in share
    assert open_share(bob, BOB, alice.public, ALICE, 7, share) == secret
    # A random nonce each time.
    assert seal_share(alice, ALICE, bob.public, BOB, 7, secret)[:12] != share[:12]


def test_a_fixed_nonce_makes_the_same_share(pairs: tuple[KeyPair, KeyPair, KeyPair]) -> None:
    alice, bob, _ = pairs
    nonce = bytes(12)
    share = seal_share(alice, ALICE, bob.public, BOB, 0, bytes(32), nonce=nonce)
    assert share == seal_share(alice, ALICE, bob.public, BOB, 0, bytes(32), nonce=nonce)
    assert share[:12] == nonce
    with pytest.raises(E2EEError):
        seal_share(alice, ALICE, bob.public, BOB, 0, bytes(32), nonce=bytes(11))


def test_a_share_opens_for_its_recipient_only(pairs: tuple[KeyPair, KeyPair, KeyPair]) -> None:
    alice, bob, carol = pairs
    share = seal_share(alice, ALICE, bob.public, BOB, 3, bytes(32))
    attempts = [
        (carol, BOB, alice.public, ALICE, 3),  # the wrong recipient's key
        (carol, CAROL, alice.public, ALICE, 3),  # forwarded to someone else
        (bob, CAROL, alice.public, ALICE, 3),  # the wrong to id
        (bob, BOB, alice.public, CAROL, 3),  # the wrong from id
        (bob, BOB, carol.public, ALICE, 3),  # claimed by another sender's key
        (bob, BOB, alice.public, ALICE, 4),  # relabelled with another generation
    ]
    for own, own_id, peer_public, peer_id, generation in attempts:
        with pytest.raises(E2EEError):
            open_share(own, own_id, peer_public, peer_id, generation, share)


def test_a_tampered_share_does_not_open(pairs: tuple[KeyPair, KeyPair, KeyPair]) -> None:
    alice, bob, _ = pairs
    share = seal_share(alice, ALICE, bob.public, BOB, 0, bytes(32))
    for index in range(len(share)):
        tampered = bytearray(share)
        tampered[index] ^= 0x40
        with pytest.raises(E2EEError):
            open_share(bob, BOB, alice.public, ALICE, 0, bytes(tampered))
    for wrong_size in (share[:-1], share + b"\x00", b""):
        with pytest.raises(E2EEError, match="60 bytes"):
            open_share(bob, BOB, alice.public, ALICE, 0, wrong_size)


def test_bad_keys_ids_and_secrets_are_refused(pairs: tuple[KeyPair, KeyPair, KeyPair]) -> None:
    alice, bob, _ = pairs
    with pytest.raises(E2EEError):
        seal_share(alice, ALICE, bob.public[:31], BOB, 0, bytes(32))
    with pytest.raises(E2EEError):
        seal_share(alice, ALICE, bob.public, BOB, 0, bytes(16))
    with pytest.raises(E2EEError):
        seal_share(alice, "a\x00b", bob.public, BOB, 0, bytes(32))
    with pytest.raises(E2EEError):
        seal_share(alice, ALICE, bob.public, BOB, -1, bytes(32))
    # A low-order point gives an all-zero shared secret: refused, not used.
    with pytest.raises(E2EEError, match="no shared secret"):
        seal_share(alice, ALICE, bytes(32), BOB, 0, bytes(32))
    with pytest.raises(E2EEError):
        open_share(bob, BOB, bytes(32), ALICE, 0, bytes(60))


def test_a_key_pair() -> None:
    pair = KeyPair.generate()
    assert len(pair.public) == 32
    assert pair.fingerprint == fingerprint(pair.public)
    again = KeyPair.from_private_bytes(pair.private_bytes())
    assert again.public == pair.public
    assert KeyPair.generate().public != pair.public
    assert pair.fingerprint in repr(pair) and pair.private_bytes().hex() not in repr(pair)
    with pytest.raises(E2EEError):
        KeyPair.from_private_bytes(bytes(31))


def test_the_fingerprint_format() -> None:
    key = bytes(range(32))
    digest = hashlib.sha256(b"darktower e2ee v1 fingerprint" + key).digest()
    groups = [int.from_bytes(digest[i : i + 5], "big") % 100000 for i in (0, 5, 10, 15)]
    text = fingerprint(key)
    assert re.fullmatch(r"\d{5} \d{5} \d{5} \d{5}", text)
    assert [int(group) for group in text.split()] == groups
    assert fingerprint(bytes(32)) != fingerprint(b"\x00" * 31 + b"\x01")
    # Zero-padded: some key's groups start with a zero.
    padded = next(
        fingerprint(bytes([i]) * 32)
        for i in range(256)
        if any(g.startswith("0") for g in fingerprint(bytes([i]) * 32).split())
    )
    assert all(len(group) == 5 for group in padded.split())
    with pytest.raises(E2EEError):
        fingerprint(bytes(33))


@pytest.mark.parametrize("generation", [0, 1, 10, 4294967295])
def test_key_ids_round_trip(generation: int) -> None:
    assert key_id(generation) == str(generation)
    assert parse_key_id(key_id(generation)) == generation


@pytest.mark.parametrize(
    "text", ["", "-1", "+1", " 1", "1 ", "01", "00", "1_0", "٣", "4294967296", "1e3", "0x1"]
)
def test_what_is_not_a_key_id(text: str) -> None:
    with pytest.raises(E2EEError):
        parse_key_id(text)
