"""The load tester against ``python -m darktower``'s stack (in process, real QUIC on
127.0.0.1, real time): every join succeeds, frames are delivered and every expected frame is
accounted for, the meetings are ended; Ctrl-C (the ``stop`` event, and SIGINT to the CLI)
still leaves cleanly and prints the summary."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

from darktower.__main__ import DEV_CLIENT_FILE, Running
from darktower.client import open_gc_client
from darktower.errors import Unauthorized
from darktower.loadtest import LoadTestSettings, Stats, run_loadtest
from tests._stack import dev_stack

WAIT_S = 60  # generous: the machine is shared; a healthy run takes a few seconds


def _settings(stack: Running, **kwargs: Any) -> LoadTestSettings:
    base = LoadTestSettings(url=stack.page_url, api=stack.api_url, progress=False)
    return attrs.evolve(base, **kwargs)


async def _active_meetings(stack: Running, tmp_path: pathlib.Path) -> list[object]:
    creds = json.loads((tmp_path / "data" / DEV_CLIENT_FILE).read_text())
    async with open_gc_client(
        stack.api_url, server_certificate_hashes=[stack.certificate_sha256]
    ) as gc:
        await gc.authenticate(creds["client_id"], creds["client_secret"])
        listed = await gc.list_meetings(active=True)
    return list(listed["meetings"])


async def _wait_for_delivery(stderr: trio.abc.ReceiveStream) -> None:
    buffered = b""
    while True:
        chunk = await stderr.receive_some(4096)
        assert chunk, buffered.decode()
        buffered += chunk
        *lines, buffered = buffered.split(b"\n")
        for line in lines:
            if line.startswith(b"[running") and b" delivered 0/" not in line:
                return


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some(4096):
        pass


async def test_quick_run_delivers_and_accounts_for_every_frame(tmp_path: pathlib.Path) -> None:
    async with dev_stack(tmp_path / "data") as stack:
        stats = Stats()
        with trio.fail_after(WAIT_S):
            summary = await run_loadtest(
                _settings(stack, meetings=2, participants=3, duration=2.0), stats
            )
        assert summary.errors == {}, summary.error_examples
        assert summary.participants == summary.joined == 6
        assert summary.join_failed == 0
        assert summary.join["p50_ms"] is not None and summary.join["p50_ms"] > 0
        assert summary.join_e2e["p50_ms"] >= summary.join["p50_ms"]  # type: ignore[operator]
        assert summary.frames_sent > 0
        # Each of the 3 participants receives the 2 streams of each of the 2 others.
        assert summary.frames_expected == 2 * summary.frames_sent
        assert summary.frames_delivered > 0
        assert summary.drops == summary.frames_expected - summary.frames_delivered
        assert summary.gaps <= summary.drops or summary.drops == 0
        assert summary.latency_samples >= summary.frames_delivered
        assert summary.ok and not summary.stopped_early
        assert stats.left == 6  # everyone left with a LeaveRequest
        data = json.loads(summary.json_line())
        assert data["frames_delivered"] == summary.frames_delivered and data["ok"] is True
        assert await _active_meetings(stack, tmp_path) == []  # the run ended its meetings


async def test_stop_leaves_early_and_still_summarises(tmp_path: pathlib.Path) -> None:
    async with dev_stack(tmp_path / "data") as stack:
        stats = Stats()
        stop = trio.Event()
        settings = _settings(stack, meetings=1, participants=2, duration=3600.0)

        async def ctrl_c() -> None:
            await stats.media_started.wait()
            stop.set()

        with trio.fail_after(WAIT_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ctrl_c)
                summary = await run_loadtest(settings, stats, stop=stop)
        assert summary.stopped_early
        assert summary.joined == 2 and summary.errors == {}
        assert summary.media_s < 3600
        assert stats.left == 2
        assert await _active_meetings(stack, tmp_path) == []


async def test_cli_prints_the_json_summary_and_stops_on_sigint(tmp_path: pathlib.Path) -> None:
    async with dev_stack(tmp_path / "data") as stack:
        argv = [
            sys.executable, "-m", "darktower.loadtest", "--url", stack.page_url,
            "--api", stack.api_url, "--meetings", "1", "--participants", "2",
            "--duration", "3600", "--json", "--json-file", str(tmp_path / "summary.json"),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with trio.fail_after(WAIT_S):
            proc = await trio.lowlevel.open_process(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
            )
            try:
                assert proc.stderr is not None and proc.stdout is not None
                # The progress line (one per second: stderr is no TTY) says frames arrive.
                await _wait_for_delivery(proc.stderr)
                proc.send_signal(signal.SIGINT)
                out = b""
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_drain, proc.stderr)
                    while chunk := await proc.stdout.receive_some(4096):
                        out += chunk
                await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        assert proc.returncode == 0, out.decode()
        lines = out.decode().splitlines()
        assert len(lines) == 1  # --json: stdout is the JSON line only
        data = json.loads(lines[-1])
        assert data["stopped_early"] is True and data["ok"] is True
        assert data["joined"] == 2 and data["frames_delivered"] > 0
        assert json.loads((tmp_path / "summary.json").read_text()) == data


async def test_sessions_ended_by_the_server_are_errors_not_crashes(
    tmp_path: pathlib.Path,
) -> None:
    async with dev_stack(tmp_path / "data") as stack:
        stats = Stats()
        settings = _settings(stack, meetings=1, participants=2, duration=3600.0)
        creds = json.loads((tmp_path / "data" / DEV_CLIENT_FILE).read_text())

        async def end_meetings_mid_run() -> None:
            await stats.media_started.wait()
            async with open_gc_client(
                stack.api_url, server_certificate_hashes=[stack.certificate_sha256]
            ) as gc:
                await gc.authenticate(creds["client_id"], creds["client_secret"])
                for meeting in (await gc.list_meetings(active=True))["meetings"]:
                    await gc.end_meeting(meeting["meeting_id"])

        with trio.fail_after(WAIT_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(end_meetings_mid_run)
                # Both participants fail: the run ends without waiting out its hour.
                summary = await run_loadtest(settings, stats)
        assert summary.errors.get("session:ENDED_MEETING_ENDED") == 2, summary.errors
        assert not summary.ok
        assert summary.joined == 2


async def test_nothing_published_means_nothing_delivered(tmp_path: pathlib.Path) -> None:
    async with dev_stack(tmp_path / "data") as stack:
        with trio.fail_after(WAIT_S):
            summary = await run_loadtest(
                _settings(stack, meetings=1, participants=2, publishers=0, duration=0.5), Stats()
            )
        assert summary.errors == {} and summary.joined == 2
        assert summary.frames_sent == summary.frames_delivered == 0
        assert not summary.ok  # the exit status is 1: nothing was delivered


async def test_refused_joins_are_counted_and_the_run_ends(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    @asynccontextmanager
    async def refused(*args: Any, **kwargs: Any) -> AsyncIterator[None]:
        raise Unauthorized("join token expired")
        yield  # pragma: no cover

    monkeypatch.setattr("darktower.client._join.open_signaling", refused)  # Dialer.join
    async with dev_stack(tmp_path / "data") as stack:
        with trio.fail_after(WAIT_S):
            summary = await run_loadtest(
                _settings(stack, meetings=2, participants=2, duration=3600.0), Stats()
            )
        assert summary.errors == {"join:UNAUTHORIZED": 4}
        assert summary.error_examples["join:UNAUTHORIZED"] == "Unauthorized: join token expired"
        assert summary.joined == 0 and summary.join_failed == 4
        assert summary.media_s < 60  # nobody left to wait for: the hour was not waited out
        assert not summary.ok
        assert await _active_meetings(stack, tmp_path) == []


async def test_processes_share_the_meetings_and_merge_their_figures(
    tmp_path: pathlib.Path,
) -> None:
    async with dev_stack(tmp_path / "data") as stack:
        argv = [
            sys.executable, "-m", "darktower.loadtest", "--url", stack.page_url,
            "--api", stack.api_url, "--meetings", "3", "--participants", "2",
            "--duration", "1", "--processes", "2", "--json", "--no-progress",
        ]  # fmt: skip
        with trio.fail_after(WAIT_S):
            done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True)
        data = json.loads(done.stdout.decode().splitlines()[-1])
        assert done.returncode == 0, done.stderr.decode()
        assert data["errors"] == {} and data["ok"] is True
        assert data["meetings"] == 3 and data["participants"] == data["joined"] == 6
        assert data["frames_expected"] == data["frames_sent"] > 0  # one subscriber per stream
        assert data["frames_delivered"] > 0
        assert data["latency_samples"] >= data["frames_delivered"]
        assert await _active_meetings(stack, tmp_path) == []


EXAMPLES = sorted((pathlib.Path(__file__).parents[2] / "examples").glob("loadtest_*.sh"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.name for p in EXAMPLES])
async def test_examples_run_and_pass_options_on(
    tmp_path: pathlib.Path, script: pathlib.Path
) -> None:
    header = await trio.Path(script).read_text()
    assert "python -m darktower " in header and f"sh examples/{script.name}" in header
    async with dev_stack(tmp_path / "data") as stack:
        # The documented run, made small: later options win over the script's own.
        argv = [
            "sh", str(script), "--url", stack.page_url, "--api", stack.api_url,
            "--meetings", "1", "--participants", "2", "--duration", "0.5",
            "--processes", "1", "--json", "--no-progress",
        ]  # fmt: skip
        with trio.fail_after(WAIT_S):
            done = await trio.run_process(
                argv,
                capture_stdout=True,
                capture_stderr=True,
                env={**os.environ, "PYTHON": sys.executable},
            )
        assert done.returncode == 0, done.stderr.decode()
        data = json.loads(done.stdout.decode().splitlines()[-1])
        assert data["joined"] == 2 and data["frames_delivered"] > 0
