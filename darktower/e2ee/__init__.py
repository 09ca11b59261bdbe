"""End-to-end encryption of media frames (docs/protocol.md §16). Sans-IO: no I/O, no clock.

A publisher encrypts each frame's payload under its :class:`SenderKey` (the 46-byte header
stays in clear and is authenticated) and gives its sender secret to each participant in a key
share (:func:`seal_share`, opened with :func:`open_share`) between X25519 key pairs
(:class:`KeyPair`). Every client keeps the secrets it was given in a :class:`Keyring`, which
decrypts, ratchets forward after a join, holds frames that wait for a rotated key, and counts
what it drops. :func:`fingerprint` is a public key's safety number.
"""

from darktower.e2ee._frame import MAX_PLAINTEXT, SenderKey, ratchet_secret
from darktower.e2ee._keyring import (
    AUTH_FAILED,
    BAD_SHARE,
    DROP_REASONS,
    KEYRING_PENDING_MAX_BYTES,
    KEYRING_PENDING_MAX_FRAMES,
    MALFORMED,
    MAX_OLD_GENERATIONS,
    NO_KEY,
    OLD_KEY_GRACE_S,
    PENDING_MAX_AGE_S,
    PENDING_MAX_BYTES,
    PENDING_MAX_FRAMES,
    REPLAY_WINDOW,
    REPLAYED,
    STALE_KEY,
    Keyring,
)
from darktower.e2ee._primitives import (
    MAX_GENERATION,
    MAX_GENERATION_STEP,
    OVERHEAD,
    E2EEError,
    key_id,
    parse_key_id,
)
from darktower.e2ee._shares import KeyPair, fingerprint, open_share, seal_share

__all__ = [
    "AUTH_FAILED",
    "BAD_SHARE",
    "DROP_REASONS",
    "KEYRING_PENDING_MAX_BYTES",
    "KEYRING_PENDING_MAX_FRAMES",
    "MALFORMED",
    "MAX_GENERATION",
    "MAX_GENERATION_STEP",
    "MAX_OLD_GENERATIONS",
    "MAX_PLAINTEXT",
    "NO_KEY",
    "OLD_KEY_GRACE_S",
    "OVERHEAD",
    "PENDING_MAX_AGE_S",
    "PENDING_MAX_BYTES",
    "PENDING_MAX_FRAMES",
    "REPLAYED",
    "REPLAY_WINDOW",
    "STALE_KEY",
    "E2EEError",
    "KeyPair",
    "Keyring",
    "SenderKey",
    "fingerprint",
    "key_id",
    "open_share",
    "parse_key_id",
    "ratchet_secret",
    "seal_share",
]
