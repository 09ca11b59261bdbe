"""The shared launcher: the first signal drains the service, the service's return ends it."""

from __future__ import annotations

import os
import signal
from typing import Any

import trio
import trio.lowlevel

from darktower.launch import run_until_signal


async def test_signal_sets_shutdown_and_waits_for_the_drain() -> None:
    events: list[str] = []

    async def serve(name: str, *, shutdown: trio.Event, task_status: Any) -> None:
        task_status.started(f"running {name}")
        await shutdown.wait()
        events.append("draining")
        await trio.lowlevel.checkpoint()
        events.append("drained")

    def started(running: object) -> None:
        events.append(str(running))
        os.kill(os.getpid(), signal.SIGTERM)

    with trio.fail_after(10):
        await run_until_signal(serve, "svc", on_started=started)
    assert events == ["running svc", "draining", "drained"]


async def test_service_that_returns_ends_the_launcher_without_a_signal() -> None:
    async def serve(*, shutdown: trio.Event, task_status: Any) -> None:
        task_status.started(None)

    with trio.fail_after(10):
        await run_until_signal(serve)


def test_bad_setting_is_one_line_and_exit_status_2(capsys: Any) -> None:
    import attrs
    import pytest

    from darktower.config import option
    from darktower.launch import run_service

    @attrs.frozen
    class Settings:
        port: int = option(1, "a port")

    async def serve(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("must not start")

    os.environ["DARKTOWER_PORT"] = "not-a-port"
    try:
        with pytest.raises(SystemExit) as exited:
            run_service(Settings, serve, prog="svc", description="d", argv=[])
    finally:
        del os.environ["DARKTOWER_PORT"]
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("svc: error: ") and "port" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_gc_launcher_runs_the_keys_command(tmp_path: Any, capsys: Any, monkeypatch: Any) -> None:
    import importlib

    launcher = importlib.import_module("darktower.global")
    argv = ["python -m darktower.global", "keys", "rotate", "--data-dir", str(tmp_path)]
    monkeypatch.setattr("sys.argv", argv)
    try:
        launcher.main()
    except SystemExit as exc:
        assert exc.code == 0
    else:
        raise AssertionError("the keys command did not exit")
    assert "new join key: kid " in capsys.readouterr().out
    assert (tmp_path / "join-key.pem").stat().st_mode & 0o777 == 0o600
