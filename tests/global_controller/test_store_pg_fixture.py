"""The PostgreSQL test fixture itself: finding the binaries, and never skipping in CI."""

from __future__ import annotations

import pathlib

import pytest

from tests import _postgres


def _fake_bin(root: pathlib.Path, version: str) -> pathlib.Path:
    bindir = root / version / "bin"
    bindir.mkdir(parents=True)
    for name in ("initdb", "pg_ctl"):
        (bindir / name).write_text("")
    return bindir


def test_find_pg_bin_picks_the_newest_complete_version(tmp_path: pathlib.Path) -> None:
    pattern = str(tmp_path / "*" / "bin")
    assert _postgres.find_pg_bin(pattern) is None
    _fake_bin(tmp_path, "13")
    newest = _fake_bin(tmp_path, "15")
    (tmp_path / "16" / "bin").mkdir(parents=True)  # no initdb: not a server install
    assert _postgres.find_pg_bin(pattern) == newest


def test_missing_postgres_skips_locally_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_postgres, "find_pg_bin", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"setup-test-system\.sh"):
        _postgres.require_postgres()


def test_missing_postgres_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_postgres, "find_pg_bin", lambda: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        _postgres.require_postgres()


def test_this_machine_has_postgres() -> None:
    # The store's PostgreSQL half is tested only if this holds; skip locally, fail in CI.
    assert _postgres.require_postgres().is_dir()


def test_each_test_gets_an_empty_database(postgres_dsn: str) -> None:
    import psycopg

    with psycopg.connect(postgres_dsn) as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    assert row == (0,)
