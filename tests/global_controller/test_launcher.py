"""``python -m darktower.global`` in a subprocess: help, operator commands, SIGTERM drain."""

from __future__ import annotations

import io
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import attrs
import pytest
import trio

from darktower.global_controller import Settings
from darktower.global_controller import clients as clients_cli
from tests._cluster import GC_ID, stack_cluster
from tests.global_controller._harness import open_api

LAUNCH = [sys.executable, "-m", "darktower.global"]
START_TIMEOUT_S = 30
DRAIN_GRACE_S = 2.0


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAUNCH, *args], capture_output=True, text=True, timeout=60)


def test_help_documents_every_option() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for field in attrs.fields(Settings):
        assert "--" + field.name.replace("_", "-") in result.stdout, field.name
    assert "clients add NAME" in result.stdout


def test_clients_commands(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "data")
    added = _run("clients", "add", "ops team", "--data-dir", data)  # the real command line
    assert added.returncode == 0, added.stderr
    lines = dict(line.split(": ", 1) for line in added.stdout.splitlines() if ": " in line)
    client_id, secret = lines["client_id"], lines["client_secret"]
    assert len(secret) >= 40

    def cli(*args: str) -> tuple[int, str]:
        out = io.StringIO()
        code = clients_cli.main([*args, "--data-dir", data], prog="gc", out=out)
        return code, out.getvalue()

    code, listed = cli("list")
    assert code == 0 and client_id in listed and "ops team" in listed
    assert secret not in listed  # shown once, never again
    assert cli("add", "ops team")[0] == 1  # the name is taken
    assert "error" in capsys.readouterr().err
    assert cli("remove", client_id)[0] == 0
    assert client_id not in cli("list")[1]
    assert cli("remove", client_id)[0] == 1


def _free(kind: int, port: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def test_sigterm_drains_promptly_and_releases_the_ports(tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "DARKTOWER_DRAIN_GRACE_S": str(DRAIN_GRACE_S)}
    cluster = stack_cluster().argv("gc", GC_ID)
    process = await trio.lowlevel.open_process(
        [
            *LAUNCH,
            "--port",
            "0",
            "--grpc-port",
            "0",
            "--data-dir",
            str(tmp_path / "data"),
            *cluster,
        ],
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stderr is not None
    try:
        buffered = b""
        serving: dict[str, str] | None = None
        with trio.fail_after(START_TIMEOUT_S):
            while serving is None:
                chunk = await process.stderr.receive_some()
                assert chunk, f"launcher exited early: {buffered.decode(errors='replace')}"
                buffered += chunk
                for line in buffered.splitlines():
                    if b'"global controller serving"' in line:
                        serving = json.loads(line)
        url = serving["url"]
        port = int(url.rsplit(":", 1)[1])
        grpc_port = int(serving["grpc"].rsplit(":", 1)[1])
        cert = await trio.to_thread.run_sync(
            lambda: __import__("httpx").get(f"{url}/api/v1/dev/certificate", verify=False)
        )
        sha = bytes.fromhex(cert.json()["sha256_hex"])
        # An idle HTTP/3 connection stays open while the GC drains: it must not hold shutdown.
        async with open_api("h3", url, sha) as h3:
            assert (await h3.request("GET", "/healthz")).status == 200
            started = trio.current_time()
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(DRAIN_GRACE_S + 5):
                code = await process.wait()
            elapsed = trio.current_time() - started
        assert code == 0
        assert elapsed < DRAIN_GRACE_S + 2
        for kind, p in ((socket.SOCK_STREAM, port), (socket.SOCK_DGRAM, port)):
            assert _free(kind, p), (kind, p)
        assert _free(socket.SOCK_STREAM, grpc_port)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
