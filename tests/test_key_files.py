"""Files holding a secret are created owner-only and never written through a symlink."""

from __future__ import annotations

import json
import os
import pathlib
import stat

import pytest

from darktower.global_controller import keys
from darktower.transport import generate_dev_certificate, write_private_file

VICTIM = b"the victim's own content\n"


@pytest.fixture
def victim(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "elsewhere" / "victim"
    path.parent.mkdir()
    path.write_bytes(VICTIM)
    return path


def _mode(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _leftovers(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp" in p.name)


def test_private_file_is_owner_only_and_replaces_atomically(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "secret"
    write_private_file(path, b"one")
    assert path.read_bytes() == b"one" and _mode(path) == 0o600
    write_private_file(path, b"two")
    assert path.read_bytes() == b"two" and _mode(path) == 0o600
    assert _leftovers(tmp_path) == []


def test_private_file_is_owner_only_whatever_the_umask(tmp_path: pathlib.Path) -> None:
    old = os.umask(0)
    try:
        write_private_file(tmp_path / "secret", b"x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "secret") == 0o600


def test_a_symlink_at_the_path_is_refused_not_followed(
    tmp_path: pathlib.Path, victim: pathlib.Path
) -> None:
    link = tmp_path / "secret"
    link.symlink_to(victim)
    with pytest.raises(OSError, match="symlink"):
        write_private_file(link, b"key material")
    assert victim.read_bytes() == VICTIM and link.is_symlink()
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "elsewhere" / "new")
    with pytest.raises(OSError, match="symlink"):
        write_private_file(dangling, b"key material")
    assert not (tmp_path / "elsewhere" / "new").exists()
    assert _leftovers(tmp_path) == []


def test_signing_key_is_not_written_through_a_planted_temp_symlink(
    tmp_path: pathlib.Path, victim: pathlib.Path
) -> None:
    # The temporary name used to be predictable (join-key.pem.tmp) and opened without
    # O_NOFOLLOW or O_EXCL: a symlink planted there got the private key written into its target.
    (tmp_path / "join-key.pem.tmp").symlink_to(victim)
    keys.load_or_create_signing_key(tmp_path / "join-key.pem")
    assert victim.read_bytes() == VICTIM
    assert _mode(tmp_path / "join-key.pem") == 0o600
    assert not (tmp_path / "join-key.pem").is_symlink()


def test_a_dangling_symlink_at_the_key_path_is_refused(
    tmp_path: pathlib.Path, victim: pathlib.Path
) -> None:
    target = victim.parent / "created-by-us"
    (tmp_path / "join-key.pem").symlink_to(target)
    with pytest.raises(OSError, match="symlink"):
        keys.load_or_create_signing_key(tmp_path / "join-key.pem")
    assert not target.exists()


def test_dev_certificate_files_are_not_written_through_symlinks(
    tmp_path: pathlib.Path, victim: pathlib.Path
) -> None:
    # cert.pem was written with write_bytes (follows a symlink) when key.pem was missing.
    (tmp_path / keys.DEV_CERT_FILE).symlink_to(victim)
    with pytest.raises(OSError, match="symlink"):
        keys.load_or_create_tls("", "", tmp_path)
    assert victim.read_bytes() == VICTIM


def test_dev_tls_files_are_created_with_the_right_modes(tmp_path: pathlib.Path) -> None:
    tls = keys.load_or_create_tls("", "", tmp_path / "data")
    assert _mode(pathlib.Path(tls.keyfile)) == 0o600
    assert _mode(pathlib.Path(tls.certfile)) == 0o644
    assert _leftovers(tmp_path / "data") == []


def test_tls_credentials_write_never_follows_a_symlink(
    tmp_path: pathlib.Path, victim: pathlib.Path
) -> None:
    creds = generate_dev_certificate()
    (tmp_path / "key.pem").symlink_to(victim)
    with pytest.raises(OSError, match="symlink"):
        creds.write(tmp_path)
    assert victim.read_bytes() == VICTIM
    out = tmp_path / "fresh"
    out.mkdir()
    certfile, keyfile = creds.write(out)
    assert keyfile.read_bytes() == creds.private_key_pem and _mode(keyfile) == 0o600
    assert certfile.read_bytes() == creds.certificate_pem


def test_dev_client_credential_is_not_written_through_a_symlink(
    tmp_path: pathlib.Path, victim: pathlib.Path
) -> None:
    from darktower.__main__ import _write_private

    (tmp_path / "dev-client.json").symlink_to(victim)
    with pytest.raises(OSError, match="symlink"):
        _write_private(tmp_path / "dev-client.json", {"client_id": "c", "client_secret": "s"})
    assert victim.read_bytes() == VICTIM
    _write_private(tmp_path / "new.json", {"client_id": "c", "client_secret": "s"})
    assert json.loads((tmp_path / "new.json").read_text())["client_secret"] == "s"
    assert _mode(tmp_path / "new.json") == 0o600
