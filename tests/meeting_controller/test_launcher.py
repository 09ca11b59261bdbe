"""``python -m darktower.meeting``: --help documents the options; SIGTERM drains and exits 0."""

from __future__ import annotations

import signal
import subprocess
import sys

import trio

from tests._cluster import stack_cluster


def test_help_lists_every_option() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "darktower.meeting", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    for flag in (
        "--port",
        "--grpc-port",
        "--ops-port",
        "--gc-grpc",
        "--media-handler",
        "--join-public-key-file",
        "--grpc-host",
        "--cluster-ca",
        "--cluster-cert",
        "--cluster-key",
        "--handshake-timeout-s",
        "--drain-grace-s",
    ):
        assert flag in out.stdout


async def test_sigterm_drains_and_exits() -> None:
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "darktower.meeting",
            "--port",
            "0",
            "--grpc-port",
            "0",
            "--ops-port",
            "0",
            "--drain-grace-s",
            "1",
            *stack_cluster().argv("mc", "mc-launcher"),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert process.stderr is not None and process.stdout is not None
    seen = b""
    try:
        with trio.fail_after(60):
            while b"meeting controller running" not in seen:
                chunk = await process.stderr.receive_some() or await process.stdout.receive_some()
                assert chunk, seen
                seen += chunk
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
