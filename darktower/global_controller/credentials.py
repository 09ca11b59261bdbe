"""API client credentials: fresh ids and secrets, and secrets stored as slow scrypt hashes.

The encoded hash describes itself, so the cost can be raised later without breaking stored
hashes: ``scrypt$n=16384,r=8,p=1$<salt>$<key>`` with salt and key in unpadded base64url.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid

import attrs
import trio

from darktower.model import ClientId

SCHEME = "scrypt"
# ~50-80 ms and 16 MiB per hash on one core: slow enough to make guessing a leaked hash
# costly, cheap enough for a token request. (Tests pass cheaper parameters.)
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
KEY_BYTES = 32
SECRET_BYTES = 32  # 256 bits of entropy in each client secret
# Upper bounds accepted when verifying, so a tampered stored hash cannot make verification
# burn unbounded CPU or memory (scrypt needs 128 * n * r bytes).
MAX_N = 2**20
MAX_R = 32
MAX_P = 16
MAX_MEMORY_BYTES = 256 * 2**20
MAX_KEY_BYTES = 128
# KDF runs at once in worker threads (each holds 128*n*r bytes); more wait their turn, which
# also bounds how much CPU a flood of token requests can take.
KDF_CONCURRENCY = 2


@attrs.frozen
class ScryptParams:
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P

    def __attrs_post_init__(self) -> None:
        if self.n < 2 or self.n & (self.n - 1) or self.n > MAX_N:
            raise ValueError(f"scrypt n must be a power of two in 2..{MAX_N}, got {self.n}")
        if not 1 <= self.r <= MAX_R or not 1 <= self.p <= MAX_P:
            raise ValueError(f"scrypt r={self.r} p={self.p} out of range")
        if self.memory_bytes > MAX_MEMORY_BYTES:
            raise ValueError(f"scrypt parameters need {self.memory_bytes} bytes, too many")

    @property
    def memory_bytes(self) -> int:
        return 128 * self.n * self.r

    def encode(self) -> str:
        return f"n={self.n},r={self.r},p={self.p}"

    @classmethod
    def decode(cls, text: str) -> ScryptParams:
        fields = dict(part.split("=", 1) for part in text.split(","))
        if set(fields) != {"n", "r", "p"}:
            raise ValueError(f"bad scrypt parameters {text!r}")
        return cls(n=int(fields["n"]), r=int(fields["r"]), p=int(fields["p"]))


DEFAULT_PARAMS = ScryptParams()


def new_client_id() -> ClientId:
    """A fresh client id (a random UUID in string form)."""
    return ClientId(str(uuid.uuid4()))


def new_client_secret() -> str:
    """A fresh client secret: :data:`SECRET_BYTES` random bytes, base64url (URL and shell safe)."""
    return secrets.token_urlsafe(SECRET_BYTES)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(secret: str, salt: bytes, params: ScryptParams, length: int) -> bytes:
    return hashlib.scrypt(
        secret.encode("utf-8"),
        salt=salt,
        n=params.n,
        r=params.r,
        p=params.p,
        maxmem=params.memory_bytes + 2**20,  # OpenSSL needs a little more than 128*n*r
        dklen=length,
    )


def hash_secret(secret: str, params: ScryptParams = DEFAULT_PARAMS) -> str:
    """The encoded scrypt hash of ``secret`` with a fresh random salt.

    CPU-bound for tens of milliseconds: call it from a worker thread in async code.
    """
    salt = secrets.token_bytes(SALT_BYTES)
    key = _derive(secret, salt, params, KEY_BYTES)
    return f"{SCHEME}${params.encode()}${_b64(salt)}${_b64(key)}"


def verify_secret(secret: str, encoded: str) -> bool:
    """Whether ``secret`` matches ``encoded`` (from :func:`hash_secret`), compared in
    constant time. Uses the parameters recorded in ``encoded``.

    Raises ``ValueError`` if ``encoded`` is not such a hash (a corrupt record, not a wrong
    secret). CPU-bound: call it from a worker thread in async code.
    """
    parts = encoded.split("$")
    if len(parts) != 4 or parts[0] != SCHEME:
        raise ValueError("not a Dark Tower scrypt hash")
    params = ScryptParams.decode(parts[1])
    try:
        salt = _unb64(parts[2])
        expected = _unb64(parts[3])
    except ValueError as exc:
        raise ValueError("corrupt scrypt hash encoding") from exc
    if not salt or not 16 <= len(expected) <= MAX_KEY_BYTES:
        raise ValueError("corrupt scrypt hash encoding")
    key = _derive(secret, salt, params, len(expected))
    return hmac.compare_digest(key, expected)


# Verified against when the client id is unknown, so the answer takes as long as for a known
# client with a wrong secret. No secret derives an all-zero key in practice.
DUMMY_HASH = (
    f"{SCHEME}${DEFAULT_PARAMS.encode()}${_b64(bytes(SALT_BYTES))}${_b64(bytes(KEY_BYTES))}"
)

_kdf_limiter: trio.CapacityLimiter | None = None


def _limiter() -> trio.CapacityLimiter:
    # Created on first use, inside a trio run.
    global _kdf_limiter
    if _kdf_limiter is None:
        _kdf_limiter = trio.CapacityLimiter(KDF_CONCURRENCY)
    return _kdf_limiter


async def hash_secret_async(secret: str, params: ScryptParams = DEFAULT_PARAMS) -> str:
    """:func:`hash_secret` in a worker thread (at most :data:`KDF_CONCURRENCY` at once), so
    the trio loop keeps running. A cancelled caller waits for the hash in progress."""
    return await trio.to_thread.run_sync(hash_secret, secret, params, limiter=_limiter())


async def verify_secret_async(secret: str, encoded: str) -> bool:
    """:func:`verify_secret` in a worker thread (at most :data:`KDF_CONCURRENCY` at once).
    Raises ``ValueError`` for a malformed ``encoded``."""
    return await trio.to_thread.run_sync(verify_secret, secret, encoded, limiter=_limiter())
