"""Client ids, secrets and their scrypt hashes."""

from __future__ import annotations

import base64
import time

import pytest

from darktower.global_controller.credentials import (
    DEFAULT_PARAMS,
    DUMMY_HASH,
    KEY_BYTES,
    SALT_BYTES,
    SCRYPT_N,
    SCRYPT_P,
    SCRYPT_R,
    ScryptParams,
    hash_secret,
    hash_secret_async,
    new_client_id,
    new_client_secret,
    verify_secret,
    verify_secret_async,
)

# Cheap parameters keep the tests fast; the encoded hash carries them, so verify needs nothing.
CHEAP = ScryptParams(n=16, r=1, p=1)


def _b64len(n: int) -> int:
    return len(base64.urlsafe_b64encode(bytes(n)).rstrip(b"="))


def test_hash_then_verify() -> None:
    secret = new_client_secret()
    encoded = hash_secret(secret, CHEAP)
    assert verify_secret(secret, encoded)
    assert secret not in encoded


def test_wrong_secret_fails() -> None:
    secret = new_client_secret()
    encoded = hash_secret(secret, CHEAP)
    assert not verify_secret(secret + "x", encoded)
    assert not verify_secret(secret[:-1], encoded)
    assert not verify_secret("", encoded)
    assert not verify_secret(new_client_secret(), encoded)


def test_encoded_hash_carries_its_parameters() -> None:
    scheme, params, salt, key = hash_secret("s3cret", CHEAP).split("$")
    assert scheme == "scrypt"
    assert params == "n=16,r=1,p=1"
    assert ScryptParams.decode(params) == CHEAP
    assert len(salt) == _b64len(SALT_BYTES)
    assert len(key) == _b64len(KEY_BYTES)


def test_salts_differ_per_hash() -> None:
    first = hash_secret("same secret", CHEAP)
    second = hash_secret("same secret", CHEAP)
    assert first != second
    assert first.split("$")[2] != second.split("$")[2]
    assert verify_secret("same secret", first)
    assert verify_secret("same secret", second)


def test_parameters_change_the_key() -> None:
    salt_and_key = hash_secret("s", CHEAP).split("$", 2)[2]
    other = f"scrypt${ScryptParams(n=32, r=1, p=1).encode()}${salt_and_key}"
    assert not verify_secret("s", other)


def test_default_parameters_are_slow_kdf_settings() -> None:
    assert (DEFAULT_PARAMS.n, DEFAULT_PARAMS.r, DEFAULT_PARAMS.p) == (SCRYPT_N, SCRYPT_R, SCRYPT_P)
    assert SCRYPT_N >= 2**14 and SCRYPT_R >= 8
    start = time.perf_counter()
    encoded = hash_secret("real cost")
    elapsed = time.perf_counter() - start
    assert encoded.startswith(f"scrypt$n={SCRYPT_N},r={SCRYPT_R},p={SCRYPT_P}$")
    assert verify_secret("real cost", encoded)
    assert elapsed > 0.005  # a slow KDF, not a plain hash (generous for fast machines)


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plain-text-secret",
        "bcrypt$n=16,r=1,p=1$c2FsdA$a2V5a2V5a2V5a2V5a2V5",
        "scrypt$n=16,r=1$c2FsdA$a2V5a2V5a2V5a2V5a2V5",
        "scrypt$n=15,r=1,p=1$c2FsdA$a2V5a2V5a2V5a2V5a2V5",  # n not a power of two
        "scrypt$n=16,r=1,p=1$$a2V5a2V5a2V5a2V5a2V5",  # no salt
        "scrypt$n=16,r=1,p=1$c2FsdA$a2V5",  # key too short
        "scrypt$n=1073741824,r=8,p=1$c2FsdA$a2V5a2V5a2V5a2V5a2V5",  # would burn 128 GiB
        "scrypt$n=16,r=1,p=1$c2FsdA$a2V5a2V5a2V5a2V5a2V5$extra",
    ],
)
def test_malformed_hashes_raise(encoded: str) -> None:
    with pytest.raises(ValueError):
        verify_secret("anything", encoded)


def test_bad_parameters_are_refused() -> None:
    for kwargs in ({"n": 1}, {"n": 3}, {"r": 0}, {"p": 0}, {"n": 2**20, "r": 32}):
        with pytest.raises(ValueError):
            ScryptParams(**kwargs)


def test_new_ids_and_secrets_are_unique_and_strong() -> None:
    secrets = {new_client_secret() for _ in range(100)}
    assert len(secrets) == 100
    assert all(len(s) >= 43 for s in secrets)  # >= 256 bits in base64url
    ids = {new_client_id() for _ in range(100)}
    assert len(ids) == 100


def test_dummy_hash_costs_a_real_verification_and_matches_nothing() -> None:
    assert DUMMY_HASH.startswith(f"scrypt${DEFAULT_PARAMS.encode()}$")
    assert not verify_secret("", DUMMY_HASH)
    assert not verify_secret(new_client_secret(), DUMMY_HASH)


async def test_async_variants_run_in_threads() -> None:
    encoded = await hash_secret_async("s", CHEAP)
    assert await verify_secret_async("s", encoded)
    assert not await verify_secret_async("t", encoded)
