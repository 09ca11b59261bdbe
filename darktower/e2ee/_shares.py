"""Key agreement, key shares and the safety number.

A participant's :class:`KeyPair` is X25519, one per signaling session. A key share
(``E2EEKeyShare.ciphertext``) carries a sender secret to one recipient: ``nonce (12) ||
AES-256-GCM(KS, nonce, S, aad)``, 60 bytes, where KS comes from X25519 and HKDF over both
public keys, and the associated data names the sender, the recipient and the key id.
"""

from __future__ import annotations

import hashlib
import os
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from darktower.e2ee._primitives import (
    LABEL_FINGERPRINT,
    LABEL_SHARE,
    LABEL_SHARE_KEY,
    NONCE_SIZE,
    PUBLIC_KEY_SIZE,
    SECRET_SIZE,
    TAG_SIZE,
    E2EEError,
    check_secret,
    hkdf,
    key_id,
)

SHARE_SIZE: Final = NONCE_SIZE + SECRET_SIZE + TAG_SIZE
_SHARE_KEY_SIZE: Final = 32  # AES-256-GCM
_PRIVATE_KEY_SIZE: Final = 32


def fingerprint(public_key: bytes) -> str:
    """The safety number of ``public_key``: SHA-256("darktower e2ee v1 fingerprint" || key),
    bytes [0:5], [5:10], [10:15], [15:20] each read as a big-endian integer mod 100000,
    zero-padded to five digits, joined by spaces (``"01234 56789 01234 56789"``).
    Raises :class:`E2EEError` unless the key is 32 bytes."""
    _check_public(public_key)
    digest = hashlib.sha256(LABEL_FINGERPRINT + bytes(public_key)).digest()
    groups = (int.from_bytes(digest[i : i + 5], "big") % 100000 for i in range(0, 20, 5))
    return " ".join(f"{group:05d}" for group in groups)


class KeyPair:
    """An X25519 key pair: one per signaling session (a resume keeps it, a rejoin makes a new
    one). ``public`` is the 32 raw bytes ``JoinRequest.e2ee_public_key`` carries."""

    __slots__ = ("_private", "fingerprint", "public")

    public: bytes
    fingerprint: str

    def __init__(self, private: X25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.fingerprint = fingerprint(self.public)

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, private: bytes) -> KeyPair:
        """The key pair of 32 raw private bytes (test vectors; a real client generates)."""
        if len(private) != _PRIVATE_KEY_SIZE:
            raise E2EEError(f"an X25519 private key is 32 bytes, got {len(private)}")
        return cls(X25519PrivateKey.from_private_bytes(bytes(private)))

    def private_bytes(self) -> bytes:
        """The 32 raw private bytes (test vectors only; never sent anywhere)."""
        return self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def exchange(self, peer_public: bytes) -> bytes:
        """The X25519 shared secret with ``peer_public``. Raises :class:`E2EEError` for a key
        that is not 32 bytes or a low-order point (an all-zero shared secret)."""
        _check_public(peer_public)
        try:
            return self._private.exchange(X25519PublicKey.from_public_bytes(bytes(peer_public)))
        except ValueError as exc:
            raise E2EEError("the peer's public key makes no shared secret") from exc

    def __repr__(self) -> str:
        return f"KeyPair(fingerprint={self.fingerprint!r})"


def share_key(own: KeyPair, peer_public: bytes, from_public: bytes, to_public: bytes) -> bytes:
    """KS = HKDF(X25519(own, peer), info = label || from_public || to_public, L = 32)."""
    shared = own.exchange(peer_public)
    return hkdf(shared, LABEL_SHARE_KEY + from_public + to_public, _SHARE_KEY_SIZE)


def share_aad(from_id: str, to_id: str, generation: int) -> bytes:
    """label || 0x00 || from_id || 0x00 || to_id || 0x00 || key_id, the ids in UTF-8."""
    if "\x00" in from_id or "\x00" in to_id:
        raise E2EEError("a participant id holds a NUL character")
    return b"\x00".join(
        (LABEL_SHARE, from_id.encode(), to_id.encode(), key_id(generation).encode("ascii"))
    )


def seal_share(
    own: KeyPair,
    own_id: str,
    peer_public: bytes,
    peer_id: str,
    generation: int,
    secret: bytes,
    *,
    nonce: bytes | None = None,
) -> bytes:
    """The ``E2EEKeyShare.ciphertext`` giving the sender secret ``secret`` of ``generation``
    from ``own`` (the sender, ``own_id``) to ``peer_id`` (whose public key is
    ``peer_public``): 60 bytes. ``nonce`` is for test vectors only; by default 12 random
    bytes. Raises :class:`E2EEError` for a bad key, secret, generation or id."""
    check_secret(secret)
    if nonce is None:
        nonce = os.urandom(NONCE_SIZE)
    elif len(nonce) != NONCE_SIZE:
        raise E2EEError(f"a share nonce is {NONCE_SIZE} bytes, got {len(nonce)}")
    aad = share_aad(own_id, peer_id, generation)
    key = share_key(own, peer_public, own.public, bytes(peer_public))
    return bytes(nonce) + AESGCM(key).encrypt(nonce, bytes(secret), aad)


def open_share(
    own: KeyPair,
    own_id: str,
    peer_public: bytes,
    peer_id: str,
    generation: int,
    ciphertext: bytes,
) -> bytes:
    """The sender secret in a key share sent by ``peer_id`` (public key ``peer_public``) to
    ``own`` (``own_id``) for ``generation``. Raises :class:`E2EEError` for anything that does
    not open: a wrong size, key, sender, recipient or generation, or tampered bytes."""
    if len(ciphertext) != SHARE_SIZE:
        raise E2EEError(f"a key share is {SHARE_SIZE} bytes, got {len(ciphertext)}")
    aad = share_aad(peer_id, own_id, generation)
    key = share_key(own, peer_public, bytes(peer_public), own.public)
    data = bytes(ciphertext)
    try:
        return AESGCM(key).decrypt(data[:NONCE_SIZE], data[NONCE_SIZE:], aad)
    except InvalidTag as exc:
        raise E2EEError("the key share does not open") from exc


def _check_public(public_key: bytes) -> None:
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise E2EEError(f"an X25519 public key is 32 bytes, got {len(public_key)}")
