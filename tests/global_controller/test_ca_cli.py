"""``python -m darktower.global ca init | issue``: the cluster CA and service certificates."""

from __future__ import annotations

import io
import pathlib
import stat
import subprocess
import sys

import pytest

from darktower.global_controller import cluster_ca
from darktower.servicekit import ClusterCa, ClusterTls, ServiceIdentity, ServiceRole

LAUNCH = [sys.executable, "-m", "darktower.global"]


def _mode(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    return cluster_ca.main(list(args), prog="gc", out=out), out.getvalue()


def test_init_then_issue_on_the_real_command_line(tmp_path: pathlib.Path) -> None:
    ca_dir, out_dir = tmp_path / "ca", tmp_path / "certs"
    out_dir.mkdir()
    init = subprocess.run(
        [*LAUNCH, "ca", "init", "--ca-dir", str(ca_dir)], capture_output=True, text=True
    )
    assert init.returncode == 0, init.stderr
    assert _mode(ca_dir / "ca-key.pem") == 0o600 and _mode(ca_dir) == 0o700
    assert _mode(ca_dir / "ca.pem") == 0o644
    issue = ["ca", "issue", "--ca-dir", str(ca_dir), "--role", "mc", "--id", "mc-7"]
    issued = subprocess.run(
        [*LAUNCH, *issue, "--out", str(out_dir)],
        capture_output=True,
        text=True,
    )
    assert issued.returncode == 0, issued.stderr
    assert "darktower://mc/mc-7" in issued.stdout
    cert, key = out_dir / "mc-mc-7.pem", out_dir / "mc-mc-7-key.pem"
    assert _mode(key) == 0o600
    tls = ClusterTls.from_files(ca_dir / "ca.pem", cert, key)  # checks the chain and the key
    assert tls.identity == ServiceIdentity(ServiceRole.MC, "mc-7")


def test_init_refuses_to_replace_a_ca_and_issue_checks_its_input(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_dir = str(tmp_path / "ca")
    assert _cli("init", "--ca-dir", ca_dir)[0] == 0
    before = ClusterCa.load(ca_dir)
    assert _cli("init", "--ca-dir", ca_dir)[0] == 1
    assert "exists" in capsys.readouterr().err
    assert ClusterCa.load(ca_dir) == before
    assert _cli("issue", "--ca-dir", ca_dir, "--role", "mh", "--id", "bad id")[0] == 1
    assert "service id" in capsys.readouterr().err
    assert _cli("issue", "--ca-dir", str(tmp_path / "none"), "--role", "mh", "--id", "h")[0] == 1
    with pytest.raises(SystemExit):
        _cli("issue", "--ca-dir", ca_dir, "--role", "admin", "--id", "x")
    code, out = _cli("issue", "--ca-dir", ca_dir, "--role", "gc", "--id", "gc-1")
    assert code == 0 and "darktower://gc/gc-1" in out
    assert (pathlib.Path(ca_dir) / "gc-gc-1-key.pem").exists()
