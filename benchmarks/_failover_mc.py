"""Meeting Controller failover, for benchmarks/failover.py.

The services are the operator's launchers, each its own process on 127.0.0.1: ``python -m
darktower.global`` (its data dir holds the TLS certificate all serve; one API client per
participant from ``clients add``), two ``python -m darktower.meeting`` (``mc-a``, ``mc-b``, on
ports fixed for the run so that a restarted one is where its MH and the GC look for it) and one
``python -m darktower.media`` registered with each. PARTICIPANTS participants join one meeting
through the GC with ``join_meeting_via_gc`` (each as its own API client), publish, subscribe to
each other (benchmarks/_failover_peers.py), everything at the defaults.

Each kill: SIGKILL of the MC that hosts the meeting (as the GC names it) at t0; per participant
``mc_failover_rejoin_*``: t0 to its session's Rejoined event (back in the meeting, at the other
MC); beside it ``mc_failover_detect_*`` (t0 to its Reconnecting: the client noticed) and
``mc_failover_media_*`` (t0 to the first frame it received that was sent after its Rejoined),
and from the GC's log, once per kill, when it declared the MC lost (``mc_failover_gc_noticed_*``)
and moved the meeting to the other MC (``mc_failover_gc_moved_*``).
Then the killed MC is started again with the same id and ports and the next kill waits until it
is ready (registered with the GC, its MH registered with it again): the meeting is on the other
MC then, so the two take turns.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import trio

import darktower.client
from benchmarks._bench import percentiles
from benchmarks._failover_mh import shown
from benchmarks._failover_peers import (
    Member,
    all_flowing,
    open_member_via_gc,
    start_media,
    subscribe_all,
)
from benchmarks._failover_procs import (
    START_S,
    Service,
    Services,
    free_bases,
    service_env,
    until_ready,
    url_port,
)
from darktower.client import GlobalControllerClient, open_gc_client
from darktower.servicekit import ClusterCa, ServiceIdentity, ServiceRole

PARTICIPANTS = 4
CONTROLLERS = ("mc-a", "mc-b")
WAIT_S = 30.0  # bound on media flowing, on a restarted MC being ready
REJOIN_S = 90.0  # bound on a rejoin (the client's rejoin window is 60 s from the loss)
SETTLE_S = 2.0  # media flowing this long before each kill (a pace)
# The GC learns an MC is lost by its heartbeat timeout or, sooner, by probing it when a client
# names it unreachable (docs/protocol.md §14): whichever it logged first.
GC_LOST = "meeting controller missed its heartbeats; its meetings are CONTROLLER_LOST"
GC_PROBED_LOST = (
    "meeting controller unreachable, as a client said; its meetings are CONTROLLER_LOST"
)
GC_MOVED = "meeting moved to another meeting controller"
NOT_USABLE = "the client library has no rejoin through the GC (darktower.client.Rejoined)"


@attrs.frozen
class McStack:
    gc: Service
    gc_url: str
    controllers: dict[str, Service]  # id -> its current process
    signal_ports: dict[str, int]
    ops: dict[str, str]
    pins: list[bytes]
    clients: list[tuple[str, str]]  # (client id, secret) per participant


def _cluster(directory: pathlib.Path) -> dict[str, list[str]]:
    """The cluster CA and a certificate per service; each one's cluster options by id."""
    ca = ClusterCa.create("Dark Tower failover benchmark CA")
    (directory / ClusterCa.CERT_FILE).write_bytes(ca.cert_pem)
    idents = [(ServiceRole.GC, "gc-fo")]
    idents += [(ServiceRole.MC, c) for c in CONTROLLERS]
    idents += [(ServiceRole.MH, f"mh-{c[-1]}") for c in CONTROLLERS]
    options = {}
    for role, ident in idents:
        ca.issue(ServiceIdentity(role, ident)).write(directory)
        stem = directory / f"{role}-{ident}"
        options[ident] = [
            f"--cluster-ca={directory / ClusterCa.CERT_FILE}",
            f"--cluster-cert={stem}.pem",
            f"--cluster-key={stem}-key.pem",
        ]
    return options


async def _add_client(data: pathlib.Path, name: str, cwd: pathlib.Path) -> tuple[str, str]:
    """``python -m darktower.global clients add`` -> (client id, secret) as it prints them."""
    done = await trio.run_process(
        [sys.executable, "-m", "darktower.global", "clients", "add", name, "--data-dir", data],
        stdin=subprocess.DEVNULL,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=str(cwd),
        env=service_env(),
    )
    out = done.stdout.decode()
    ids = re.search(r"^client_id: (\S+)$", out, re.MULTILINE)
    secrets = re.search(r"^client_secret: (\S+)$", out, re.MULTILINE)
    if done.returncode != 0 or not ids or not secrets:
        raise RuntimeError(f"clients add: {out} {done.stderr.decode()}")
    return ids.group(1), secrets.group(1)


@asynccontextmanager
async def open_mc_stack(services: Services, directory: pathlib.Path) -> AsyncIterator[McStack]:
    """The GC, two MCs and an MH each, all ready; all drained at the end."""
    from darktower.global_controller.keys import DEV_CERT_FILE, DEV_KEY_FILE
    from darktower.transport import TlsCredentials

    await trio.Path(directory).mkdir(parents=True)
    data = directory / "gc-data"
    clients = [await _add_client(data, f"p{i}", directory) for i in range(PARTICIPANTS)]
    cluster = _cluster(directory)
    since = len(services.started)
    try:
        gc = await services.start(
            "gc",
            "darktower.global",
            ["--data-dir", str(data), "--port=0", "--grpc-port=0", *cluster["gc-fo"]],
            "global controller serving",
        )
        tls = [f"--certfile={data / DEV_CERT_FILE}", f"--keyfile={data / DEV_KEY_FILE}"]
        bases = free_bases(3 * len(CONTROLLERS))
        controllers, ports, ops = {}, {}, {}
        for n, ident in enumerate(CONTROLLERS):
            signal_port, grpc, ops_port = bases[3 * n : 3 * n + 3]
            controllers[ident] = await services.start(
                ident,
                "darktower.meeting",
                [
                    f"--port={signal_port}",
                    f"--grpc-port={grpc}",
                    f"--ops-port={ops_port}",
                    *tls,
                    f"--gc-grpc={gc.ready['grpc']}",
                    *cluster[ident],
                ],
                "meeting controller running",
            )
            mh = f"mh-{ident[-1]}"
            mh_options = ["--port=0", "--grpc-port=0", "--ops-port=0", *tls]
            await services.start(
                mh,
                "darktower.media",
                [*mh_options, f"--mc-grpc=127.0.0.1:{grpc}", *cluster[mh]],
                "media handler running",
            )
            ports[ident], ops[ident] = signal_port, f"http://127.0.0.1:{ops_port}"
        for ident in CONTROLLERS:
            await until_ready(ops[ident], START_S, ident)
        pins = [TlsCredentials.from_files(data / DEV_CERT_FILE, data / DEV_KEY_FILE).sha256]
        yield McStack(gc, gc.ready["url"], controllers, ports, ops, pins, clients)
    finally:
        with trio.CancelScope(shield=True):
            await services.stop_all(since)  # the restarted MCs too


@asynccontextmanager
async def _members(stack: McStack) -> AsyncIterator[tuple[str, list[Member]]]:
    """A meeting made by the first participant; everyone in it through the GC, media flowing."""
    async with AsyncExitStack() as joined:
        gcs: list[GlobalControllerClient] = []
        for client_id, secret in stack.clients:
            gc = await joined.enter_async_context(
                open_gc_client(stack.gc_url, server_certificate_hashes=stack.pins)
            )
            await gc.authenticate(client_id, secret)
            gcs.append(gc)
        meeting = (await gcs[0].create_meeting("failover", max_participants=10)).meeting_id
        members = []
        for i, gc in enumerate(gcs):
            opening = open_member_via_gc(gc, meeting, f"p{i}", stack.pins)
            members.append(await joined.enter_async_context(opening))
        for i, member in enumerate(members):
            await start_media(member, video=i == 0)
        await subscribe_all(members, tagged=False)
        if not await all_flowing(members, WAIT_S):
            raise RuntimeError("media does not flow: " + "; ".join(m.state() for m in members))
        yield meeting, members


async def _kill(
    services: Services,
    stack: McStack,
    gc: GlobalControllerClient,
    meeting: str,
    members: Sequence[Member],
    verbose: bool,
) -> dict[str, Any]:
    Rejoined = darktower.client.Rejoined
    Reconnecting = darktower.client.Reconnecting
    if not await all_flowing(members, WAIT_S):
        raise RuntimeError("media does not flow: " + "; ".join(m.state() for m in members))
    await trio.sleep(SETTLE_S)  # a quiet stretch (a pace, not a wait for something)
    port = url_port(str((await gc.get_meeting(meeting))["meeting_controller_url"]))
    [ident] = [i for i, p in stack.signal_ports.items() if p == port]
    victim = stack.controllers[ident]
    gc_mark = stack.gc.mark()
    t0, wall0 = trio.current_time(), time.time()
    os.kill(victim.pid, signal.SIGKILL)
    rejoined: list[float | None] = [None] * len(members)
    media: list[float | None] = [None] * len(members)

    async def back(i: int, m: Member) -> None:
        event = await m.wait_event(Rejoined, t0, REJOIN_S)
        if event is None:
            return
        at, wall, _ = event
        rejoined[i] = at
        media[i] = await m.rx.first(m.rx.since(at), lambda j: m.rx.sent[j] > wall, WAIT_S)

    async with trio.open_nursery() as nursery:
        for i, m in enumerate(members):
            nursery.start_soon(back, i, m)
    detect = [m.event_after(Reconnecting, t0) for m in members]
    result: dict[str, Any] = {
        "controller": ident,
        "rejoin_ms": [None if r is None else (r - t0) * 1e3 for r in rejoined],
        "media_ms": [(v - t0) * 1e3 for v in media if v is not None],
        "detect_ms": [(d[0] - t0) * 1e3 for d in detect if d is not None],
        "lost": [m.state() for m in members if m.s.end_reason is not None],
    }
    # The GC's side, from its log: it declared the MC lost, it moved the meeting.
    for key, at in (
        (
            "gc_noticed_ms",
            _first(
                stack.gc.logged_at(GC_LOST, gc_mark, controller=ident),
                stack.gc.logged_at(GC_PROBED_LOST, gc_mark, controller=ident),
            ),
        ),
        ("gc_moved_ms", stack.gc.logged_at(GC_MOVED, gc_mark, from_controller=ident)),
    ):
        result[key] = [] if at is None else [(at - wall0) * 1e3]
    await services.stop(victim, signal.SIGKILL)  # reaped
    stack.controllers[ident] = await services.restart(victim, "meeting controller running")
    await until_ready(stack.ops[ident], WAIT_S, f"{ident} started again")
    result["ready_again_s"] = trio.current_time() - t0
    if verbose:
        shown = {k: v for k, v in result.items() if k != "lost"}
        print(f"    SIGKILL {ident}: {shown} {result['lost']}", flush=True)
    return result


async def mc_phase(
    services: Services, directory: pathlib.Path, count: int, verbose: bool = False
) -> tuple[list[dict[str, Any]], str]:
    """``count`` kills of the meeting's MC; the runs and a note (why fewer ran, if so)."""
    if not hasattr(darktower.client, "Rejoined"):
        return [], NOT_USABLE
    runs: list[dict[str, Any]] = []
    async with open_mc_stack(services, directory) as stack, _members(stack) as (meeting, ms):
        async with open_gc_client(stack.gc_url, server_certificate_hashes=stack.pins) as gc:
            await gc.authenticate(*stack.clients[0])
            for _ in range(count):
                runs.append(await _kill(services, stack, gc, meeting, ms, verbose))
                if runs[-1]["lost"]:
                    return runs, "participants were lost: " + "; ".join(runs[-1]["lost"])
    return runs, ""


def mc_figures(
    runs: Sequence[dict[str, Any]], note: str, log: Callable[[str], None]
) -> dict[str, Any]:
    rejoins = [r for run in runs for r in run["rejoin_ms"]]
    done = [r for r in rejoins if r is not None]
    figures: dict[str, Any] = {
        "mc_failover_kills": len(runs),
        "mc_failover_samples": len(rejoins),
        "mc_failover_lost": sum(len(r["lost"]) for r in runs),
    }
    series = {
        "rejoin": rejoins if None not in rejoins else [],
        "detect": [v for run in runs for v in run["detect_ms"]],
        "media": [v for run in runs for v in run["media_ms"]],
        "gc_noticed": [v for run in runs for v in run["gc_noticed_ms"]],
        "gc_moved": [v for run in runs for v in run["gc_moved_ms"]],
    }
    for name, samples in series.items():
        for q, value in percentiles(samples, (50, 99, 100)).items():
            key = f"mc_failover_{name}_{q.replace('p100', 'max')}_ms"
            figures[key] = value if samples else None
    if note or not runs or len(done) < len(rejoins):
        figures["mc_failover_note"] = note or "not every participant rejoined"
    if figures["mc_failover_rejoin_p99_ms"] is None:
        log(f"MC SIGKILL: no figure ({figures.get('mc_failover_note')})")
    log(
        f"MC SIGKILL x{len(runs)} ({PARTICIPANTS} participants): back in the meeting p50 "
        f"{shown(figures['mc_failover_rejoin_p50_ms'])}, p99 "
        f"{shown(figures['mc_failover_rejoin_p99_ms'])} (goal <= 5000 ms); the client noticed "
        f"p50 {shown(figures['mc_failover_detect_p50_ms'])}, the GC declared the MC lost p50 "
        f"{shown(figures['mc_failover_gc_noticed_p50_ms'])} and moved the meeting p50 "
        f"{shown(figures['mc_failover_gc_moved_p50_ms'])}, media p99 "
        f"{shown(figures['mc_failover_media_p99_ms'])}; {figures['mc_failover_lost']} lost"
    )
    for run in runs:
        for state in run["lost"]:
            log(f"  lost: {state}")
    return figures


def _first(*stamps: float | None) -> float | None:
    known = [s for s in stamps if s is not None]
    return min(known) if known else None
