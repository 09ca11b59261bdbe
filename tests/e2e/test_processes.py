"""The three launchers as separate processes on 127.0.0.1 (issue #8, item 5).

``python -m darktower.global`` (with a client registered by ``clients add``), ``python -m
darktower.meeting`` and ``python -m darktower.media`` run as subprocesses wired as
``python -m darktower`` wires them in one process: the GC's data dir holds the certificate
all three serve, the MC registers with the GC's gRPC, the MH with the MC's. Then, over real
HTTP/3 and WebTransport: create a meeting, three clients join, one publishes, two subscribe
and receive byte-identical frames; kick (KICKED); end (MEETING_ENDED). Finally each process
gets SIGTERM and must exit 0 within its drain deadline, leaving no process, no bound port,
no stray file and no traceback behind.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import socket
import ssl
import subprocess
import sys
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import attrs
import pytest
import trio

from darktower.client import (
    CreatedMeeting,
    GlobalControllerClient,
    MediaClient,
    SignalingClient,
    media_url,
    open_gc_client,
    open_media_client,
    open_signaling,
)
from darktower.global_controller.keys import (
    ACCESS_KEY_FILE,
    DEV_CERT_FILE,
    DEV_KEY_FILE,
    JOIN_KEY_FILE,
    JOIN_KEY_HISTORY_FILE,
)
from darktower.model import LeaveReason
from darktower.protocol.pb import common_pb2 as common
from darktower.transport import TlsCredentials
from tests._cluster import stack_cluster

from ._flow import next_event, publish_to
from ._processes import (
    MAX_CAPTURE_BYTES,
    Output,
    ServiceFailed,
    ServiceProcess,
    get_json,
    open_service,
    port_free,
    session_members,
    terminate,
    wait_ready,
)

# Every launcher drains for this long on SIGTERM; it must have exited by DRAIN_GRACE_S +
# EXIT_MARGIN_S (interpreter teardown, the gRPC servers' short shielded stop, a busy CI box).
DRAIN_GRACE_S = 2.0
EXIT_MARGIN_S = 3.0
WAIT_S = 20.0
# Interval between probes of a service's /debug/tree (an out-of-process observation).
POLL_S = 0.05
# The whole test, startup of three interpreters included, on a loaded 2-core machine.
TEST_DEADLINE_S = 150.0
# The log line each launcher writes when SIGTERM starts its drain (and not a plain death).
DRAIN_MESSAGES = {
    "gc": "draining",
    "mc": "meeting controller draining",
    "mh": "media handler draining",
}
# What the GC leaves in its data dir: the SQLite store, the signing keys, the dev certificate.
EXPECTED_DATA_FILES = {
    "gc.db",
    JOIN_KEY_FILE,
    JOIN_KEY_HISTORY_FILE,
    ACCESS_KEY_FILE,
    DEV_CERT_FILE,
    DEV_KEY_FILE,
}


@attrs.frozen
class Stack:
    gc: ServiceProcess
    mc: ServiceProcess
    mh: ServiceProcess
    api_url: str
    signal_url: str
    media_url: str
    certificate_sha256: bytes
    client_id: str
    client_secret: str
    # (port, socket kind) each service listened on, to check they are free after exit.
    ports: dict[str, list[tuple[int, int]]]


def _port(netloc_or_url: str) -> int:
    if "://" in netloc_or_url:
        port = urllib.parse.urlsplit(netloc_or_url).port
        assert port is not None, netloc_or_url
        return port
    return int(netloc_or_url.rpartition(":")[2])


async def _cluster_ca(cluster: pathlib.Path, cwd: pathlib.Path) -> dict[str, list[str]]:
    """The cluster CA and one certificate per service, made as an operator does (docs/
    architecture.md §8): ``ca init``, then ``ca issue`` per role; each role's launcher flags."""
    ca = ["--ca-dir", str(cluster)]
    commands = [["init", *ca]] + [
        ["issue", *ca, "--role", role, "--id", f"{role}-e2e"] for role in ("gc", "mc", "mh")
    ]
    for command in commands:
        done = await trio.run_process(
            [sys.executable, "-m", "darktower.global", "ca", *command],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=str(cwd),
        )
        assert done.returncode == 0, done.stderr.decode()
    return {
        role: [
            f"--cluster-ca={cluster / 'ca.pem'}",
            f"--cluster-cert={cluster / f'{role}-{role}-e2e.pem'}",
            f"--cluster-key={cluster / f'{role}-{role}-e2e-key.pem'}",
        ]
        for role in ("gc", "mc", "mh")
    }


async def _add_client(data: pathlib.Path, cwd: pathlib.Path) -> tuple[str, str]:
    """``python -m darktower.global clients add`` → (client id, secret) as it prints them."""
    done = await trio.run_process(
        [
            sys.executable,
            "-m",
            "darktower.global",
            "clients",
            "add",
            "e2e",
            "--data-dir",
            str(data),
        ],
        stdin=subprocess.DEVNULL,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=str(cwd),
    )
    out = done.stdout.decode()
    assert done.returncode == 0, (out, done.stderr.decode())
    ids = re.search(r"^client_id: (\S+)$", out, re.MULTILINE)
    secrets = re.search(r"^client_secret: (\S+)$", out, re.MULTILINE)
    assert ids and secrets, out
    return ids.group(1), secrets.group(1)


@asynccontextmanager
async def three_processes(tmp_path: pathlib.Path) -> AsyncIterator[Stack]:
    """GC, then MC (registers with the GC), then MH (registers with the MC), each ready on
    its /readyz; every port is 0 and read back from the launcher's ready log line."""
    data = tmp_path / "data"
    client_id, client_secret = await _add_client(data, tmp_path)
    cluster = await _cluster_ca(tmp_path / "cluster", tmp_path)
    cwd = str(tmp_path)  # a service writing outside the data dir would show up here
    drain = ["--drain-grace-s", str(DRAIN_GRACE_S)]
    async with AsyncExitStack() as processes:
        gc = await processes.enter_async_context(
            open_service(
                "gc",
                "darktower.global",
                [
                    "--data-dir",
                    str(data),
                    "--port",
                    "0",
                    "--grpc-port",
                    "0",
                    *drain,
                    *cluster["gc"],
                ],
                ready_message="global controller serving",
                cwd=cwd,
            )
        )
        certfile, keyfile = str(data / DEV_CERT_FILE), str(data / DEV_KEY_FILE)
        tls = ["--certfile", certfile, "--keyfile", keyfile]
        ports = ["--port", "0", "--grpc-port", "0", "--ops-port", "0"]
        mc = await processes.enter_async_context(
            open_service(
                "mc",
                "darktower.meeting",
                [*ports, *tls, "--gc-grpc", gc.ready["grpc"], *drain, *cluster["mc"]],
                ready_message="meeting controller running",
                cwd=cwd,
            )
        )
        mh = await processes.enter_async_context(
            open_service(
                "mh",
                "darktower.media",
                [*ports, *tls, "--mc-grpc", mc.ready["grpc"], *drain, *cluster["mh"]],
                ready_message="media handler running",
                cwd=cwd,
            )
        )
        # The GC's TLS certificate is the dev one in its data dir, valid for 127.0.0.1.
        await wait_ready(
            f"{gc.ready['url']}/readyz", gc, verify=ssl.create_default_context(cafile=certfile)
        )
        # MC ready = registered with the GC (join key known); MH ready = registered with the MC.
        await wait_ready(f"{mc.ready['ops']}/readyz", mc)
        await wait_ready(f"{mh.ready['ops']}/readyz", mh)
        tcp, udp = socket.SOCK_STREAM, socket.SOCK_DGRAM
        yield Stack(
            gc=gc,
            mc=mc,
            mh=mh,
            api_url=gc.ready["url"],
            signal_url=mc.ready["signal_url"],
            media_url=mh.ready["media_url"],
            certificate_sha256=TlsCredentials.from_files(certfile, keyfile).sha256,
            client_id=client_id,
            client_secret=client_secret,
            ports={
                "gc": [
                    (_port(gc.ready["url"]), tcp),
                    (_port(gc.ready["url"]), udp),
                    (_port(gc.ready["grpc"]), tcp),
                ],
                "mc": [
                    (_port(mc.ready["signal_url"]), udp),
                    (_port(mc.ready["grpc"]), tcp),
                    (_port(mc.ready["ops"]), tcp),
                ],
                "mh": [
                    (_port(mh.ready["media_url"]), udp),
                    (_port(mh.ready["grpc"]), tcp),
                    (_port(mh.ready["ops"]), tcp),
                ],
            },
        )


async def _member(
    clients: AsyncExitStack, stack: Stack, meeting: CreatedMeeting, token: str, name: str
) -> tuple[SignalingClient, MediaClient]:
    """Join ``meeting`` (signaling) and connect to its media; both close with ``clients``."""
    pins = [stack.certificate_sha256]
    signaling = await clients.enter_async_context(
        open_signaling(
            meeting.meeting_controller_url,
            meeting_id=meeting.meeting_id,
            join_token=token,
            participant_name=name,
            server_certificate_hashes=pins,
        )
    )
    assert signaling.join_response is not None
    url = media_url(signaling.join_response)
    assert url.startswith(stack.media_url + "?")  # placed on our MH process
    media = await clients.enter_async_context(
        open_media_client(url, server_certificate_hashes=pins)
    )
    return signaling, media


async def _open_meeting(
    clients: AsyncExitStack, stack: Stack
) -> tuple[GlobalControllerClient, CreatedMeeting]:
    gc = await clients.enter_async_context(
        open_gc_client(stack.api_url, server_certificate_hashes=[stack.certificate_sha256])
    )
    await gc.authenticate(stack.client_id, stack.client_secret)
    meeting = await gc.create_meeting("Processes")
    assert meeting.meeting_controller_url == stack.signal_url
    return gc, meeting


async def _meeting_flow(stack: Stack) -> None:
    """Create (HTTP/3), three join, publish → 2 subscribers byte-identical, kick, end."""
    async with AsyncExitStack() as clients:
        gc, meeting = await _open_meeting(clients, stack)
        host, host_media = await _member(clients, stack, meeting, meeting.join_token, "host")
        guests = []
        owner_token, gc.access_token = gc.access_token, None  # guests join without a token
        for name in ("ann", "bob"):
            ticket = await gc.join_meeting(meeting.meeting_id, name)
            assert ticket.role == "guest"
            guests.append(await _member(clients, stack, meeting, ticket.join_token, name))
        gc.access_token = owner_token

        await publish_to(host, host_media, guests)

        bob, _ = guests[1]
        await gc.kick(meeting.meeting_id, bob.participant_id)
        with trio.fail_after(WAIT_S):
            await bob.closed.wait()
        assert bob.end_reason == LeaveReason.KICKED
        left = await next_event(host, "participant_left")
        assert left.participant_left.participant_id == bob.participant_id
        assert left.participant_left.reason == common.KICKED
        # The kick reached the MH too: bob's participant scope (and its streams) are gone; left
        # are the host's publication, ann's subscription and each one's "data" task
        # (docs/architecture.md §4.3).
        await _wait_counts(stack.mh.ready["ops"], participants=2, streams=4)

        await gc.end_meeting(meeting.meeting_id)
        for client in (host, guests[0][0]):
            with trio.fail_after(WAIT_S):
                await client.closed.wait()
            assert client.end_reason == LeaveReason.MEETING_ENDED
        assert (await gc.get_meeting(meeting.meeting_id))["status"] == "ended"


async def _wait_counts(ops_url: str, **expected: int) -> None:
    """Poll the service's /debug/tree until its live counts match ``expected``."""
    counts: dict[str, int] = {}
    with trio.move_on_after(WAIT_S):
        while True:
            counts = (await get_json(f"{ops_url}/debug/tree"))["counts"]
            if all(counts.get(level) == n for level, n in expected.items()):
                return
            await trio.sleep(POLL_S)  # an out-of-process observation: poll, with a deadline
    raise AssertionError(f"{ops_url}/debug/tree counts {counts}, expected {expected}")


async def _stop(service: ServiceProcess, ports: list[tuple[int, int]]) -> None:
    """SIGTERM → a drain → exit 0 within the drain deadline, nothing left behind."""
    seconds = await terminate(service)
    print(f"{service.name}: exit {service.process.returncode} {seconds:.2f} s after SIGTERM")
    assert service.process.returncode == 0, service.name
    assert seconds <= DRAIN_GRACE_S + EXIT_MARGIN_S, (service.name, seconds)
    messages = [record.get("msg") for record in service.log_records()]
    assert DRAIN_MESSAGES[service.name] in messages, f"{service.name} did not drain"
    assert session_members(service.pid) == [], f"{service.name} left processes behind"
    assert service.finished.is_set(), f"{service.name}'s output pipes are held open"
    for port, kind in ports:
        assert port_free(port, kind), (service.name, port, kind)
    for output in (service.stdout, service.stderr):
        assert not output.traceback, f"{service.name} logged a traceback"
    levels = {record.get("level") for record in service.log_records()}
    assert not levels & {"error", "critical"}, (service.name, levels)


def _assert_nothing_left(tmp_path: pathlib.Path) -> None:
    # Only the data dir, holding only what the GC keeps (no SQLite journal, no temp key file),
    # and the cluster CA's directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster", "data"]
    assert all(p.suffix == ".pem" for p in (tmp_path / "cluster").iterdir())
    assert {p.name for p in (tmp_path / "data").iterdir()} == EXPECTED_DATA_FILES
    for private in (JOIN_KEY_FILE, ACCESS_KEY_FILE, DEV_KEY_FILE):
        assert (tmp_path / "data" / private).stat().st_mode & 0o077 == 0, private


@pytest.mark.slow
async def test_three_processes_meeting_then_sigterm(tmp_path: pathlib.Path) -> None:
    with trio.fail_after(TEST_DEADLINE_S):
        async with three_processes(tmp_path) as stack:
            await _meeting_flow(stack)
            # The meeting's end released every scope on both servers.
            await _wait_counts(stack.mc.ready["ops"], meetings=0, participants=0, streams=0)
            await _wait_counts(stack.mh.ready["ops"], meetings=0, participants=0, streams=0)
            # Reverse dependency order, so no service outlives the one it reports to.
            for service in (stack.mh, stack.mc, stack.gc):
                await _stop(service, stack.ports[service.name])
    _assert_nothing_left(tmp_path)


@pytest.mark.slow
async def test_sigterm_drains_a_live_meeting(tmp_path: pathlib.Path) -> None:
    """SIGTERM while a meeting runs: the MC's drain hands both clients over (SERVER_SHUTDOWN
    reaches both), then the MH and the GC, still holding live client connections, drain too; each
    exits 0 within its deadline."""
    with trio.fail_after(TEST_DEADLINE_S):
        async with three_processes(tmp_path) as stack, AsyncExitStack() as clients:
            gc, meeting = await _open_meeting(clients, stack)
            host = await _member(clients, stack, meeting, meeting.join_token, "host")
            gc.access_token = None
            ticket = await gc.join_meeting(meeting.meeting_id, "ann")
            guest = await _member(clients, stack, meeting, ticket.join_token, "ann")
            await publish_to(*host, [guest])
            # A publication, a subscription and each participant's "data" task.
            await _wait_counts(stack.mh.ready["ops"], participants=2, streams=4)

            await _stop(stack.mc, stack.ports["mc"])
            for signaling, _ in (host, guest):
                with trio.fail_after(WAIT_S):
                    await signaling.closed.wait()
                assert signaling.end_reason == LeaveReason.SERVER_SHUTDOWN
            async with trio.open_nursery() as nursery:  # a host shutdown: both at once
                for service in (stack.mh, stack.gc):
                    nursery.start_soon(_stop, service, stack.ports[service.name])
    _assert_nothing_left(tmp_path)


# The helpers' own guarantees: a check that cannot fail proves nothing.


def test_port_free_sees_bound_tcp_and_udp_ports() -> None:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind(("127.0.0.1", 0))
            if kind == socket.SOCK_STREAM:
                sock.listen()
            port = sock.getsockname()[1]
            assert not port_free(port, kind)
        assert port_free(port, kind)


async def test_session_members_sees_a_process_left_behind() -> None:
    # A shell that exits at once, leaving a child in its session: what a leak looks like.
    done = await trio.run_process(
        ["sh", "-c", "sleep 30 </dev/null >/dev/null 2>&1 & echo $$"],
        capture_stdout=True,
        start_new_session=True,
    )
    sid = int(done.stdout)
    try:
        assert len(session_members(sid)) == 1
    finally:
        os.killpg(sid, signal.SIGKILL)


def test_output_flags_tracebacks_and_bounds_capture() -> None:
    output = Output()
    output.add('{"level": "info", "msg": "fine"}')
    assert not output.traceback
    output.add('{"level": "error", "msg": "boom", "exc": "Traceback ..."}')
    assert output.traceback
    text = Output()
    text.add("x" * MAX_CAPTURE_BYTES)
    text.add("Traceback (most recent call last):")  # past the bound: dropped, still seen
    assert text.traceback and text.dropped_lines == 1


@pytest.mark.slow
async def test_open_service_reports_a_launcher_that_exits_early(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ServiceFailed, match="exited"):
        async with open_service(
            "mh",
            "darktower.media",
            ["--port", "not-a-port"],
            ready_message="media handler running",
            cwd=str(tmp_path),
        ):
            raise AssertionError("never ready")


@pytest.mark.slow
async def test_open_service_kills_the_process_group_when_the_test_fails(
    tmp_path: pathlib.Path,
) -> None:
    ports = ["--port", "0", "--grpc-port", "0", "--ops-port", "0"]
    ports += stack_cluster().argv("mh", "mh-e2e")
    with pytest.raises(RuntimeError, match="test failed"):
        async with open_service(
            "mh", "darktower.media", ports, ready_message="media handler running", cwd=str(tmp_path)
        ) as mh:
            assert session_members(mh.pid) == [mh.pid]
            raise RuntimeError("test failed")
    assert mh.process.returncode == -signal.SIGKILL
    assert session_members(mh.pid) == []
