"""``python -m darktower.media --workers N`` (docs/architecture.md §4.6): each worker's options,
its certificate, the restart backoff, and the supervisor's handling of real (small) worker
processes: restart after an unexpected exit, drain on stop, kill after the deadline, reaping
on cancellation, and a worker draining once its supervisor is gone. Real MH workers behind a
real MC: tests/e2e/test_media_workers.py."""

from __future__ import annotations

import os
import pathlib
import signal
import stat
import subprocess
import sys
from typing import Any

import pytest
import trio
import trio.testing

from darktower.config import ConfigError
from darktower.media_handler import Settings
from darktower.media_handler._supervisor import (
    Supervisor,
    WorkerSpec,
    plan_workers,
    serve_supervised,
)
from darktower.media_handler._workers import (
    IssuedFiles,
    IssuingCa,
    RestartBackoff,
    WorkerOptions,
    per_worker_certificates,
    split_worker_options,
    worker_options,
)
from darktower.servicekit import ClusterCa, ClusterTls, ServiceIdentity, ServiceRole
from tests._cluster import stack_cluster

WAIT_S = 20.0  # real processes on a shared machine: a bound, not an expectation

# A stand-in worker: exits 0 on SIGTERM (unless it was born ignoring it), and when the
# supervisor's pipe (--supervisor-fd) reaches end of file.
WORKER = """
import os, signal, sys
fd = int(next(a for a in sys.argv if a.startswith("--supervisor-fd=")).split("=")[1])
if signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while os.read(fd, 1):
    pass
"""


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"port": 4434, "grpc_port": 50053, "ops_port": 0}
    return Settings(**{**values, **overrides})


# --- options --------------------------------------------------------------------------------
def test_the_supervisor_options_are_taken_out_and_the_rest_kept_in_order() -> None:
    options, rest = split_worker_options(
        ["--port", "5000", "--workers", "3", "--log-json", "--worker-ca-dir=ca", "-h"], {}
    )
    assert options == WorkerOptions(workers=3, ca_dir="ca")
    assert rest == ["--port", "5000", "--log-json", "-h"]
    env = {"DARKTOWER_WORKERS": "2", "DARKTOWER_WORKER_CA_DIR": "/ca"}
    assert split_worker_options([], env)[0] == WorkerOptions(workers=2, ca_dir="/ca")
    assert split_worker_options(["--workers=1"], env)[0].workers == 1  # a flag wins
    assert split_worker_options(["--supervisor-fd", "7"], {})[0].supervisor_fd == 7
    assert split_worker_options([], {})[0] == WorkerOptions()
    # No abbreviation: --work is the MH's business (it refuses it), not --workers.
    assert split_worker_options(["--work", "2"], {})[1] == ["--work", "2"]


@pytest.mark.parametrize("bad", [["--workers", "0"], ["--workers", "65"], ["--workers", "x"]])
def test_a_bad_worker_count_is_refused(bad: list[str]) -> None:
    with pytest.raises(ConfigError, match="--workers"):
        split_worker_options(bad, {})


def test_per_worker_certificates_come_from_id_paths_or_a_ca() -> None:
    plain = _settings(cluster_cert="mh-a.pem", cluster_key="mh-a-key.pem")
    assert not per_worker_certificates(plain, WorkerOptions())
    assert per_worker_certificates(plain, WorkerOptions(ca_dir="ca"))
    per_id = _settings(cluster_cert="mh-{id}.pem", cluster_key="mh-{id}-key.pem")
    assert per_worker_certificates(per_id, WorkerOptions())


def test_each_worker_has_its_own_id_ports_and_certificate() -> None:
    settings = _settings(handler_id="edge", cluster_ca="ca.pem")
    files = IssuedFiles("ca.pem", "certs/mh-{id}.pem", "certs/mh-{id}-key.pem")
    assert worker_options(settings, 1, "edge-1", files) == [
        "--workers=1",
        "--handler-id=edge-1",
        "--port=4435",
        "--grpc-port=50054",
        "--ops-port=0",  # any free port, for each worker
        "--cluster-ca=ca.pem",
        "--cluster-cert=certs/mh-edge-1.pem",
        "--cluster-key=certs/mh-edge-1-key.pem",
    ]


def test_certificates_issued_beforehand_are_checked_before_anything_starts() -> None:
    cluster = stack_cluster()
    for ident in ("pre-0", "pre-1", "other"):
        cluster.options("mh", ident)
    directory = cluster.directory
    settings = _settings(
        handler_id="pre",
        cluster_ca=str(cluster.ca_file),
        cluster_cert=f"{directory}/mh-{{id}}.pem",
        cluster_key=f"{directory}/mh-{{id}}-key.pem",
    )
    files = IssuedFiles(settings.cluster_ca, settings.cluster_cert, settings.cluster_key)
    workers = plan_workers(settings, WorkerOptions(), 2, files)
    assert [(w.index, w.handler_id) for w in workers] == [(0, "pre-0"), (1, "pre-1")]
    assert f"--cluster-cert={directory}/mh-pre-1.pem" in workers[1].options
    with pytest.raises(ConfigError, match="pre-2"):  # never issued
        plan_workers(settings, WorkerOptions(), 3, files)
    (directory / "mh-wrong-0.pem").write_bytes((directory / "mh-other.pem").read_bytes())
    (directory / "mh-wrong-0-key.pem").write_bytes((directory / "mh-other-key.pem").read_bytes())
    wrong = _settings(**{**_fields(settings), "handler_id": "wrong"})
    with pytest.raises(ConfigError, match="names mh/other, not mh/wrong-0"):
        plan_workers(wrong, WorkerOptions(), 1, files)
    with pytest.raises(ConfigError, match="--handler-id ID is required"):
        plan_workers(
            _settings(**{**_fields(settings), "handler_id": ""}), WorkerOptions(), 1, files
        )
    with pytest.raises(ConfigError, match="--port 65535"):
        plan_workers(_settings(**{**_fields(settings), "port": 65535}), WorkerOptions(), 2, files)


def _fields(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in ("handler_id", "port", "grpc_port")} | {
        "cluster_ca": settings.cluster_ca,
        "cluster_cert": settings.cluster_cert,
        "cluster_key": settings.cluster_key,
    }


def test_a_supervisor_holding_the_ca_issues_each_worker_its_certificate(
    tmp_path: pathlib.Path,
) -> None:
    ca = ClusterCa.create("workers test CA")
    issuing = IssuingCa(ca, tmp_path)
    workers = plan_workers(_settings(), WorkerOptions(ca_dir="unused"), 2, issuing)
    base = workers[0].handler_id.removesuffix("-0")
    assert base.startswith("mh-") and workers[1].handler_id == f"{base}-1"
    for worker in workers:
        ca_file, cert, key = issuing.files(worker.handler_id)  # issued once, at the plan
        assert f"--cluster-cert={cert}" in worker.options
        tls = ClusterTls.from_files(ca_file, cert, key)
        assert tls.identity == ServiceIdentity(ServiceRole.MH, worker.handler_id)
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["ca.pem"] + [f"mh-{w.handler_id}{s}.pem" for w in workers for s in ("", "-key")]
    )


def test_restart_backoff_doubles_up_to_its_bound_with_jitter_and_resets_when_healthy() -> None:
    backoff = RestartBackoff(first_s=0.5, max_s=4.0, healthy_after_s=60.0, jitter=0.5)
    assert [backoff.delay(1.0, 0.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.delay(60.0, 0.0) == 0.5  # it ran long enough: start over
    assert backoff.delay(1.0, 0.999) == pytest.approx(1.0 * 0.5005)  # at most half off
    assert RestartBackoff().delay(0.0, 0.0) == 0.5


# --- the supervisor, with stand-in workers ----------------------------------------------------
def _supervisor(stop_after_s: float = WAIT_S) -> Supervisor:
    workers = [WorkerSpec(i, f"w-{i}", (f"--index={i}",)) for i in range(2)]
    return Supervisor(
        [sys.executable, "-c", WORKER],
        workers,
        stop_after_s=stop_after_s,
        backoff=lambda: RestartBackoff(first_s=0.01, max_s=0.05),
    )


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_a_worker_that_dies_is_restarted_and_a_stop_drains_every_worker() -> None:
    supervisor = _supervisor()
    async with trio.open_nursery() as nursery:
        codes: list[int] = []

        async def run() -> None:
            codes.append(await supervisor.run())

        nursery.start_soon(run)
        with trio.fail_after(WAIT_S):
            first = await supervisor.wait_started("w-0")
            other = await supervisor.wait_started("w-1")
            os.kill(first, signal.SIGKILL)
            again = await supervisor.wait_started("w-0", not_pid=first)
        assert again != first and supervisor.pids["w-1"] == other  # the other one untouched
        supervisor.stop()
    assert codes == [0] and supervisor.clean
    assert not _alive(again) and not _alive(other)


async def test_a_worker_that_ignores_sigterm_is_killed_after_the_deadline() -> None:
    supervisor = _supervisor(stop_after_s=0.3)
    async with trio.open_nursery() as nursery:
        codes: list[int] = []

        async def run() -> None:
            codes.append(await supervisor.run())

        # The workers are born ignoring SIGTERM (a disposition survives exec): no race with
        # their start-up.
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            nursery.start_soon(run)
            with trio.fail_after(WAIT_S):
                pids = [await supervisor.wait_started(f"w-{i}") for i in range(2)]
        finally:
            signal.signal(signal.SIGTERM, previous)
        supervisor.stop()
    assert codes == [1] and not supervisor.clean  # killed, not drained
    assert not any(_alive(pid) for pid in pids)


async def test_cancelling_the_supervisor_kills_and_reaps_its_workers() -> None:
    supervisor = _supervisor()
    with trio.move_on_after(WAIT_S) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(supervisor.run)
            pids = [await supervisor.wait_started(f"w-{i}") for i in range(2)]
            nursery.cancel_scope.cancel()
    assert not scope.cancelled_caught
    assert not any(_alive(pid) for pid in pids)


async def test_a_worker_drains_when_its_supervisor_is_gone() -> None:
    read_fd, write_fd = os.pipe()
    seen: list[str] = []

    async def serve(settings: str, *, shutdown: trio.Event, task_status: Any) -> None:
        task_status.started(settings)
        await shutdown.wait()
        seen.append("drained")

    try:
        async with trio.open_nursery() as nursery:
            shutdown = trio.Event()
            running = await nursery.start(
                lambda task_status: serve_supervised(
                    serve, read_fd, "settings", shutdown=shutdown, task_status=task_status
                )
            )
            assert running == "settings"
            await trio.testing.wait_all_tasks_blocked()
            assert not shutdown.is_set()
            os.close(write_fd)  # the supervisor exits (or is killed)
            write_fd = -1
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
    assert seen == ["drained"]


# --- the launcher ---------------------------------------------------------------------------
def _launch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "darktower.media", *args],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        env={k: v for k, v in os.environ.items() if not k.startswith("DARKTOWER_")},
    )


def test_the_launcher_documents_the_worker_options() -> None:
    out = _launch("--help").stdout
    assert "--workers N" in out and "--worker-ca-dir" in out and "{id}" in out


def test_several_workers_with_one_certificate_are_refused_before_anything_starts() -> None:
    one = stack_cluster().argv("mh", "only-one")
    done = _launch("--workers", "2", "--port=0", "--grpc-port=0", "--ops-port=0", *one)
    assert done.returncode == 2
    assert "--workers 2 needs a certificate per worker" in done.stderr
    assert "Traceback" not in done.stderr
    done = _launch("--workers", "0")
    assert done.returncode == 2 and "--workers must be 1 to 64" in done.stderr
