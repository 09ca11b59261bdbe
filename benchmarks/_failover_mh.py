"""Media Handler failover and drain, for benchmarks/failover.py.

The services are the operator's launchers, each its own process on 127.0.0.1: ``python -m
darktower.meeting`` (no GC: the benchmark assigns the meeting as the GC would, over mutual TLS
with a GC certificate of the run's cluster CA, and signs the join tokens with the key the MC
was given) and ``python -m darktower.media --workers 2`` registered with it (worker i is
``mh-fo-i`` on each base port + i, its certificate issued beforehand). PARTICIPANTS sessions
of the client library join the meeting in this process (benchmarks/_failover_peers.py).

Each failure takes the worker that hosts the room: its pid is the supervisor's latest start of
the worker whose media port the participants' media URL names. SIGKILL (``kills``) or SIGTERM
(``drains``: it drains, the MC moves its room) at t0, then for each participant the first frame
on a media connection opened after t0 (the MC's MediaReconnect named the other worker); a
drain's figure is the longest gap between frames a participant received from BEFORE_S before
t0 to AFTER_S after that first frame, with the same participant's longest gap over a window as
long just before it as a baseline. From the MC's log, once per failure: when it noticed (the
MH lost, or draining: ``*_mc_noticed_*``) and moved the room (``*_room_moved_*``). Then the
supervisor restarts the worker (with its backoff) and the next failure waits until the worker
is registered again (its /readyz): the room is on the other worker then, so the two workers
take turns. Each phase has its own services (a fresh supervisor starts with a fresh backoff).
"""

from __future__ import annotations

import os
import pathlib
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import trio

from benchmarks._bench import percentiles
from benchmarks._failover_peers import (
    Member,
    all_flowing,
    open_member,
    start_media,
    subscribe_all,
)
from benchmarks._failover_procs import (
    START_S,
    Service,
    Services,
    free_bases,
    until_ready,
    url_port,
)
from darktower.model import MeetingId, Role
from darktower.servicekit import ClusterCa, ClusterTls, ServiceIdentity, ServiceRole

MEETING = "failover"
HANDLER_ID = "mh-fo"
IDS = {ServiceRole.MC: "mc-fo", ServiceRole.GC: "gc-fo"}
WORKERS = 2
PARTICIPANTS = 4
WAIT_S = 30.0  # bound on media coming back after one failure (a miss counts as this long)
REGISTER_S = 120.0  # the failed worker back and registered (the supervisor's backoff: to 30 s)
EXIT_S = 30.0  # a drained worker's exit (its default drain grace is 10 s)
BEFORE_S, AFTER_S = 0.5, 1.0  # a drain's gap window: from before t0 to after media is back
SETTLE_S = 2.0  # media flowing this long before each failure: the baseline's window


@attrs.frozen
class MhStack:
    mc: Service
    supervisor: Service
    signal_url: str
    media_base: int
    ops_base: int
    pins: list[bytes]
    issuer: Any

    def worker(self, media_url: str) -> int:
        return url_port(media_url) - self.media_base

    def ops(self, worker: int) -> str:
        return f"http://127.0.0.1:{self.ops_base + worker}"

    def pid(self, worker: int) -> int:
        handler = f"{HANDLER_ID}-{worker}"
        started = self.supervisor.logged(
            lambda r: r.get("msg") == "media worker started" and r.get("handler_id") == handler
        )
        return int(started[-1]["pid"])

    def token(self, name: str, role: Role) -> str:
        return str(self.issuer.issue(MeetingId(MEETING), role, time.time(), participant_name=name))


def _cluster(directory: pathlib.Path) -> dict[str, list[str]]:
    """A cluster CA and the certificates of the MC, the workers and the GC's calls; the
    launchers' cluster options per role."""
    ca = ClusterCa.create("Dark Tower failover benchmark CA")
    (directory / ClusterCa.CERT_FILE).write_bytes(ca.cert_pem)
    for role, ident in IDS.items():
        ca.issue(ServiceIdentity(role, ident)).write(directory)
    for i in range(WORKERS):
        ca.issue(ServiceIdentity(ServiceRole.MH, f"{HANDLER_ID}-{i}")).write(directory)
    files = {"mc": f"mc-{IDS[ServiceRole.MC]}", "mh": "mh-{id}"}
    return {
        role: [
            f"--cluster-ca={directory / ClusterCa.CERT_FILE}",
            f"--cluster-cert={directory / f'{stem}.pem'}",
            f"--cluster-key={directory / f'{stem}-key.pem'}",
        ]
        for role, stem in files.items()
    }


async def _assign(grpc: str, directory: pathlib.Path) -> None:
    """AssignMeeting at the MC, as the GC (its certificate) calls it."""
    from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb
    from darktower.protocol.pb.v1.meeting_control_grpc import MeetingControlStub
    from darktower.transport.rpc import call, open_rpc_channel, open_rpc_loop

    stem = directory / f"gc-{IDS[ServiceRole.GC]}"
    tls = ClusterTls.from_files(
        directory / ClusterCa.CERT_FILE, f"{stem}.pem", f"{stem}-key.pem"
    ).client_context()
    host, port = grpc.rsplit(":", 1)
    async with open_rpc_loop(), open_rpc_channel(host, int(port), tls=tls) as channel:
        config = mtg_pb.MeetingConfig(max_participants=100)
        await call(
            MeetingControlStub(channel).AssignMeeting,
            mtg_pb.AssignMeeting(meeting_id=MEETING, config=config),
        )


def _files(directory: pathlib.Path) -> tuple[list[str], list[bytes], Any, pathlib.Path, Any]:
    """The run's TLS certificate (options, pin), join-token key (issuer, public key file) and
    cluster (options per role), written in ``directory``."""
    from darktower.protocol.tokens import JoinTokenIssuer, generate_signing_key, public_key_pem
    from darktower.transport import generate_dev_certificate

    directory.mkdir(parents=True)
    cert = generate_dev_certificate()
    certfile, keyfile = cert.write(directory)
    key = generate_signing_key()
    pubkey = directory / "join.pub.pem"
    pubkey.write_bytes(public_key_pem(key))
    tls = [f"--certfile={certfile}", f"--keyfile={keyfile}"]
    return tls, [cert.sha256], JoinTokenIssuer(key), pubkey, _cluster(directory)


@asynccontextmanager
async def open_mh_stack(services: Services, directory: pathlib.Path) -> AsyncIterator[MhStack]:
    """The MC and the supervisor of WORKERS MHs, every worker registered, the meeting assigned;
    both drained at the end."""
    tls, pins, issuer, pubkey, cluster = _files(directory)
    zero = ["--port=0", "--grpc-port=0", "--ops-port=0"]
    since = len(services.started)
    mc = await services.start(
        "mc",
        "darktower.meeting",
        [*zero, *tls, f"--join-public-key-file={pubkey}", *cluster["mc"]],
        "meeting controller running",
    )
    media, grpc, ops = free_bases(3, WORKERS)
    try:
        supervisor = await services.start(
            "mh-workers",
            "darktower.media",
            [
                f"--workers={WORKERS}",
                f"--handler-id={HANDLER_ID}",
                f"--port={media}",
                f"--grpc-port={grpc}",
                f"--ops-port={ops}",
                f"--mc-grpc={mc.ready['grpc']}",
                *tls,
                *cluster["mh"],
            ],
            "media workers started",
        )
        stack = MhStack(mc, supervisor, mc.ready["signal_url"], media, ops, pins, issuer)
        for i in range(WORKERS):
            await until_ready(stack.ops(i), START_S, f"worker {i}")
        await _assign(mc.ready["grpc"], directory)
        yield stack
    finally:
        with trio.CancelScope(shield=True):
            await services.stop_all(since)


@asynccontextmanager
async def _members(stack: MhStack) -> AsyncIterator[list[Member]]:
    """PARTICIPANTS participants (the first the host, who sends video too), each subscribed
    to everyone else's streams, media flowing."""
    async with AsyncExitStack() as joined:
        members = []
        for i in range(PARTICIPANTS):
            name, role = f"p{i}", Role.HOST if i == 0 else Role.GUEST
            opening = open_member(
                stack.signal_url, MEETING, name, stack.token(name, role), stack.pins
            )
            members.append(await joined.enter_async_context(opening))
        for i, member in enumerate(members):
            await start_media(member, video=i == 0)
        await subscribe_all(members, tagged=True)
        if not await all_flowing(members, WAIT_S):
            raise RuntimeError("media does not flow: " + "; ".join(m.state() for m in members))
        yield members


# --- one failure --------------------------------------------------------------------------
async def _fail(
    stack: MhStack, members: Sequence[Member], sig: signal.Signals, verbose: bool
) -> dict[str, Any]:
    """Kill or drain the room's worker; what each participant saw, the worker's return."""
    if not await all_flowing(members, WAIT_S):
        raise RuntimeError("media does not flow: " + "; ".join(m.state() for m in members))
    await trio.sleep(SETTLE_S)  # a quiet stretch (a pace, not a wait for something)
    urls = {m.urls[-1] for m in members}
    if len(urls) != 1:
        raise RuntimeError(f"the room is split over {sorted(urls)}")
    [url] = urls
    worker = stack.worker(url)
    handler, pid = f"{HANDLER_ID}-{worker}", stack.pid(worker)
    links = [m.link for m in members]
    ids = [m.s.participant_id for m in members]
    mark, mc_mark = stack.supervisor.mark(), stack.mc.mark()
    t0, wall0 = trio.current_time(), time.time()
    os.kill(pid, sig)
    starts = [m.rx.since(t0) for m in members]
    back: list[float | None] = [None] * len(members)
    video: list[float | None] = [None] * len(members)

    async def media_back(i: int, m: Member) -> None:
        def later(j: int) -> bool:
            return m.rx.link[j] > links[i]

        back[i] = await m.rx.first(starts[i], later, WAIT_S)
        if not m.video_stream:  # the others' video: it restarts at a key frame
            video[i] = await m.rx.first(starts[i], lambda j: later(j) and m.rx.video[j], WAIT_S)

    async with trio.open_nursery() as nursery:
        for i, m in enumerate(members):
            nursery.start_soon(media_back, i, m)
    result: dict[str, Any] = {
        "worker": worker,
        "back_ms": [None if b is None else (b - t0) * 1e3 for b in back],
        "video_ms": [(v - t0) * 1e3 for v in video if v is not None],
        "moved": sum(
            len(m.urls) > links[i] + 1 and m.urls[links[i] + 1] != url
            for i, m in enumerate(members)
        ),
        "left": [
            m.state()
            for m, pid_was in zip(members, ids, strict=True)
            if m.s.end_reason is not None or m.s.participant_id != pid_was
        ],
    }
    # The MC's side, from its log: it noticed (lost, or draining), it moved the room.
    noticed = "media handler draining" if sig is signal.SIGTERM else "media handler lost"
    for key, at in (
        ("noticed_ms", stack.mc.logged_at(noticed, mc_mark, handler_id=handler)),
        ("room_moved_ms", stack.mc.logged_at("room moved", mc_mark, from_handler=handler)),
    ):
        result[key] = [] if at is None else [(at - wall0) * 1e3]
    if sig is signal.SIGTERM:
        ends = [(b if b is not None else t0 + WAIT_S) + AFTER_S for b in back]
        await trio.sleep_until(max(ends))  # the window after media came back, to its end
        lo = t0 - BEFORE_S
        windows = list(zip(members, ends, strict=True))
        result["gap_ms"] = [m.rx.max_gap(lo, hi) * 1e3 for m, hi in windows]
        result["baseline_ms"] = [
            m.rx.max_gap(lo - min(SETTLE_S - BEFORE_S, hi - lo), lo) * 1e3 for m, hi in windows
        ]
    exited = await stack.supervisor.record(
        lambda r: r.get("msg") == "media worker exited" and r.get("handler_id") == handler,
        since=mark,
        within_s=EXIT_S,
    )
    result["exit_status"] = exited.get("status")
    result["exit_s"] = trio.current_time() - t0  # when its exit was read
    await stack.supervisor.record(
        lambda r: r.get("msg") == "media worker started" and r.get("handler_id") == handler,
        since=mark,
        within_s=REGISTER_S,
    )
    await until_ready(stack.ops(worker), REGISTER_S, f"worker {worker} after {sig.name}")
    result["registered_s"] = trio.current_time() - t0
    if verbose:
        shown = {k: _rounded(v) for k, v in result.items() if k != "left"}
        print(f"    {sig.name} worker {worker}: {shown} {result['left']}", flush=True)
    return result


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 1)
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


async def mh_phase(
    services: Services,
    directory: pathlib.Path,
    sig: signal.Signals,
    count: int,
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """``count`` failures (``sig``) of the room's worker, each on a live meeting."""
    async with open_mh_stack(services, directory) as stack, _members(stack) as members:
        return [await _fail(stack, members, sig, verbose) for _ in range(count)]


# --- figures ------------------------------------------------------------------------------
def _samples(runs: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [v for r in runs for v in r[key]]


def _p(prefix: str, samples: Sequence[float], unit: str, figures: dict[str, Any]) -> None:
    for q, value in percentiles(samples, (50, 99, 100)).items():
        figures[f"{prefix}_{q.replace('p100', 'max')}{unit}"] = value if samples else None


def shown(value: float | None, unit: str = "ms") -> str:
    """A figure for a progress line (None: n/a)."""
    if value is None:
        return "n/a"
    return f"{value:.0f} {unit}" if unit == "ms" else f"{value:.1f} {unit}"


def kill_figures(runs: Sequence[dict[str, Any]], log: Callable[[str], None]) -> dict[str, Any]:
    back = _samples(runs, "back_ms")
    misses = sum(b is None for b in back)
    samples = [WAIT_S * 1e3 if b is None else b for b in back]
    figures: dict[str, Any] = {
        "mh_failover_kills": len(runs),
        "mh_failover_participants": PARTICIPANTS,
        "mh_failover_samples": len(samples),
        "mh_failover_misses": misses,
        "mh_failover_not_moved": len(samples) - sum(r["moved"] for r in runs),
        "mh_failover_left": sum(len(r["left"]) for r in runs),
        "mh_failover_workers_killed": sorted({r["worker"] for r in runs}),
    }
    _p("mh_failover_media", samples, "_ms", figures)
    _p("mh_failover_video", _samples(runs, "video_ms"), "_ms", figures)
    _p("mh_failover_registered", [r["registered_s"] for r in runs], "_s", figures)
    _p("mh_failover_mc_noticed", _samples(runs, "noticed_ms"), "_ms", figures)
    _p("mh_failover_room_moved", _samples(runs, "room_moved_ms"), "_ms", figures)
    log(
        f"MH SIGKILL x{len(runs)} ({PARTICIPANTS} participants): media back from the other "
        f"worker p50 {shown(figures['mh_failover_media_p50_ms'])}, p99 "
        f"{shown(figures['mh_failover_media_p99_ms'])} (goal <= 3000 ms), video p99 "
        f"{shown(figures['mh_failover_video_p99_ms'])}; the MC noticed p99 "
        f"{shown(figures['mh_failover_mc_noticed_p99_ms'])}, moved the room p99 "
        f"{shown(figures['mh_failover_room_moved_p99_ms'])}; {misses} misses, "
        f"{figures['mh_failover_left']} left; worker registered again p50 "
        f"{shown(figures['mh_failover_registered_p50_s'], 's')}"
    )
    for r in runs:
        for state in r["left"]:
            log(f"  left: {state}")
    return figures


def drain_figures(runs: Sequence[dict[str, Any]], log: Callable[[str], None]) -> dict[str, Any]:
    back = _samples(runs, "back_ms")
    gaps = _samples(runs, "gap_ms")
    statuses = [r["exit_status"] for r in runs]
    figures: dict[str, Any] = {
        "mh_drain_drains": len(runs),
        "mh_drain_samples": len(gaps),
        "mh_drain_misses": sum(b is None for b in back),
        "mh_drain_not_moved": len(back) - sum(r["moved"] for r in runs),
        "mh_drain_left": sum(len(r["left"]) for r in runs),
        "mh_drain_unclean_exits": sum(s != 0 for s in statuses),
    }
    _p("mh_drain_media_gap", gaps, "_ms", figures)
    _p("mh_drain_baseline_gap", _samples(runs, "baseline_ms"), "_ms", figures)
    _p("mh_drain_media_back", [WAIT_S * 1e3 if b is None else b for b in back], "_ms", figures)
    _p("mh_drain_exit", [r["exit_s"] for r in runs], "_s", figures)
    _p("mh_drain_mc_noticed", _samples(runs, "noticed_ms"), "_ms", figures)
    _p("mh_drain_room_moved", _samples(runs, "room_moved_ms"), "_ms", figures)
    log(
        f"MH SIGTERM x{len(runs)}: longest gap in media p50 "
        f"{shown(figures['mh_drain_media_gap_p50_ms'])}, p99 "
        f"{shown(figures['mh_drain_media_gap_p99_ms'])} (goal <= 2000 ms; baseline p99 "
        f"{shown(figures['mh_drain_baseline_gap_p99_ms'])}), on the other worker p99 "
        f"{shown(figures['mh_drain_media_back_p99_ms'])}; worker exit p50 "
        f"{shown(figures['mh_drain_exit_p50_s'], 's')}, statuses {statuses}; "
        f"{figures['mh_drain_left']} left"
    )
    for r in runs:
        for state in r["left"]:
            log(f"  left: {state}")
    return figures
