"""``python -m darktower.loadtest.hostile``: throw malformed and abusive traffic at every port
of a running ``python -m darktower`` (loopback only), then check that every service answers.

    python -m darktower &
    python -m darktower.loadtest.hostile                 # the dev stack's default ports
    python -m darktower.loadtest.hostile --gc https://127.0.0.1:8443 --budget-s 20

Phases, each bounded in cases and time (``--cases``, ``--budget-s``):

1. **udp**: random and mutated QUIC datagrams (every header form) at the GC, MC and MH's
   QUIC ports, from spoofed sources 127.0.0.2... .
2. **tcp**: garbage and half-finished TLS, HTTP/1.1 and HTTP/2 at the GC's HTTPS port, the
   page, the three gRPC ports and the MC's and MH's ops ports; half-open connections held.
3. **signaling**: oversized and malformed signaling messages and media frames after real joins,
   next to a bystander participant who must stay in the meeting.
4. **requests**: malformed WebTransport CONNECTs (``//[x``, 9 KiB paths, missing
   pseudo-headers ...) and raw HTTP/3 frames, streams, capsules and datagrams.
5. **flood**: real client Initials under fresh connection IDs at ``--flood-rate`` from
   spoofed sources, never answered, while a legitimate participant joins.

After each phase the TCP listeners are asked once (a crash shows up next to its phase); at the
end every service gets a well-formed request: GC ``/healthz`` (HTTPS and HTTP/3), a real MC
join and MH media connection, the page, each gRPC port, each ops port. One line per service;
the exit status is 1 if any is dead (or the bystander was hurt), 2 for unusable options.
Every target must be in 127.0.0.0/8 or ::1 (``NotLoopback`` otherwise; names other than
``localhost`` are not resolved).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO

import attrs
import trio

from darktower.client import DevStackError, fetch_dev_access

from ._abuse_meeting import Access, bystander_alive, open_meeting
from ._abuse_quic import QuicTarget, abuse_requests, fuzz_udp, spoofed_flood
from ._abuse_signal import abuse_signaling
from ._abuse_tcp import TcpTarget, abuse_tcp
from ._hostile_report import Report
from ._hostile_targets import MEDIA_PATH, SIGNAL_PATH, Endpoint, Targets, endpoint_url
from ._loopback import NotLoopback, ensure_loopback
from ._probes import QUICK_S, Check, check_grpc, check_http, check_http3, timed_join
from ._tally import Tally

__all__ = [
    "Check",
    "Endpoint",
    "NotLoopback",
    "Options",
    "Report",
    "Targets",
    "ensure_loopback",
    "main",
    "parse_args",
    "run_hostile",
]

PROG = "python -m darktower.loadtest.hostile"
EXIT_OK, EXIT_DEAD, EXIT_UNUSABLE = 0, 1, 2
# Shares of --budget-s per phase (they add up to 1).
PHASE_SHARES = {"udp": 0.1, "flood": 0.2, "tcp": 0.2, "signaling": 0.2, "requests": 0.3}
# Datagram phases send this many times --cases (a datagram is far cheaper than a connection).
DATAGRAM_FACTOR = 10


@attrs.frozen
class Options:
    budget_s: float = 30.0  # all phases together (the final checks come on top)
    cases: int = 200  # per phase (datagram phases: DATAGRAM_FACTOR times as many)
    seed: int | None = None
    flood_rate: float = 300.0  # spoofed Initials per second during the flood phase
    sources: int = 32  # spoofed source addresses
    client_id: str = ""
    client_secret: str = ""
    cert_sha256: bytes = b""


async def quick_checks(targets: Targets) -> list[Check]:
    """The TCP listeners, once each (a crashed process shows up here first)."""
    checks = [
        check_http(
            "GC HTTPS /healthz",
            targets.gc.host,
            targets.gc.port,
            "/healthz",
            tls=True,
            seconds=QUICK_S,
        )
    ]
    if targets.page:
        checks.append(
            check_http(
                "page GET /", targets.page.host, targets.page.port, "/", tls=False, seconds=QUICK_S
            )
        )
    checks += [
        check_http(f"{e.name} /healthz", e.host, e.port, "/healthz", tls=False, seconds=QUICK_S)
        for e in targets.ops
    ]
    return await _gather(checks)


async def _gather(probes: Sequence[Awaitable[Check]]) -> list[Check]:
    results: list[Check | None] = [None] * len(probes)

    async def one(i: int, probe: Awaitable[Check]) -> None:
        results[i] = await probe

    async with trio.open_nursery() as nursery:
        for i, probe in enumerate(probes):
            nursery.start_soon(one, i, probe)
    return [r for r in results if r is not None]


async def final_checks(targets: Targets, access: Access | None) -> list[Check]:
    """A well-formed request to every service (see the module docstring)."""
    pins = list(access.pins) if access else []
    probes: list[Awaitable[Check]] = [
        check_http("GC HTTPS GET /healthz", targets.gc.host, targets.gc.port, "/healthz", tls=True),
        check_http3("GC HTTP/3 GET /healthz", targets.api_url, pins),
    ]
    if targets.page:
        probes.append(
            check_http("page GET /", targets.page.host, targets.page.port, "/", tls=False)
        )
    probes += [check_grpc(e.name, e.host, e.port) for e in targets.grpc]
    probes += [
        check_http(f"{e.name} GET /healthz", e.host, e.port, "/healthz", tls=False)
        for e in targets.ops
    ]
    checks = await _gather(probes)
    if access is None:
        checks.append(Check("MC (signaling join)", False, "no credentials: the page gave none"))
        checks.append(Check("MH (media connect)", False, "no credentials: no join"))
    else:
        joined = await timed_join(access.api_url, access.client_id, access.client_secret, pins)
        checks += [joined.mc, joined.mh]
    return checks


async def resolve_access(targets: Targets, options: Options) -> Access:
    """The credential and pin: given, or from the dev page. Raises DevStackError."""
    access = await fetch_dev_access(
        targets.page_url,
        client_id=options.client_id,
        client_secret=options.client_secret,
        certificate_sha256=options.cert_sha256,
    )
    return Access(
        targets.api_url, access.client_id, access.client_secret, (access.certificate_sha256,)
    )


async def run_hostile(
    targets: Targets, options: Options, *, progress: Callable[[str], None] | None = None
) -> Report:
    """Run every phase against ``targets`` and check every service; never raises for what a
    service does (a dead service is a line of the report). Bounded by ``options.budget_s``
    plus the final checks (each PROBE_S at most)."""
    seed = options.seed if options.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    report = Report(seed)
    say = progress or (lambda line: None)
    access: Access | None = None
    try:
        access = await resolve_access(targets, options)
    except DevStackError as exc:
        report.notes.append(f"no credentials ({exc}): signaling phase and join checks skipped")
    pins = access.pins if access else ()
    origin = f"https://{targets.gc.host}:{targets.gc.port}"  # what the client library sends
    quic = [
        QuicTarget("GC", targets.gc.host, targets.gc.port, "", pins),
        QuicTarget(
            "MC", targets.signal.host, targets.signal.port, targets.signal_path, pins, origin
        ),
        QuicTarget("MH", targets.media.host, targets.media.port, targets.media_path, pins, origin),
    ]
    tcp = [TcpTarget("GC", targets.gc.host, targets.gc.port, "https")]
    if targets.page:
        tcp.append(TcpTarget("page", targets.page.host, targets.page.port, "http"))
    tcp += [TcpTarget(e.name, e.host, e.port, "h2c") for e in targets.grpc]
    tcp += [TcpTarget(e.name, e.host, e.port, "http") for e in targets.ops]
    budget = {name: share * options.budget_s for name, share in PHASE_SHARES.items()}
    cases = options.cases

    async def phase(name: str, run: Callable[[Tally], Awaitable[None]]) -> None:
        tally = Tally(name)
        started = time.perf_counter()
        try:
            await run(tally)
        except Exception as exc:  # the checker's own failure must not hide the verdict
            report.notes.append(f"{name}: stopped early by {type(exc).__name__}: {exc}")
        tally.seconds = time.perf_counter() - started
        report.tallies.append(tally)
        report.after_phase[name] = await quick_checks(targets)
        say(tally.line())

    async def flood(tally: Tally) -> None:
        async def join() -> None:
            if access is not None:
                report.join_under_flood = await timed_join(
                    access.api_url, access.client_id, access.client_secret, list(pins)
                )
            await trio.sleep(max(0.0, budget["flood"] - 0.5))

        report.flood = await spoofed_flood(
            quic,
            tally,
            rate=options.flood_rate,
            seconds=budget["flood"],
            sources=options.sources,
            during=join,
        )

    meeting: Any = None

    async def signaling(tally: Tally) -> None:
        if meeting is not None:
            await abuse_signaling(meeting, rng, tally, cases=cases, seconds=budget["signaling"])

    async def bystander(task_status: trio.TaskStatus[Any]) -> None:
        # Its own task: whatever happens to the bystander's session is recorded, never raised
        # into the phases.
        started = False
        try:
            assert access is not None
            async with open_meeting(access) as joined:
                started = True
                task_status.started(joined)
                await trio.sleep_forever()
        except Exception as exc:
            report.notes.append(f"the checker's meeting: {type(exc).__name__}: {exc}")
            if not started:
                task_status.started(None)

    async with trio.open_nursery() as nursery:
        if access is not None:
            meeting = await nursery.start(bystander)
        await phase(
            "udp",
            lambda t: fuzz_udp(
                quic,
                rng,
                t,
                cases=cases * DATAGRAM_FACTOR,
                seconds=budget["udp"],
                sources=options.sources,
            ),
        )
        await phase("tcp", lambda t: abuse_tcp(tcp, rng, t, cases=cases, seconds=budget["tcp"]))
        await phase("signaling", signaling)
        await phase(
            "requests",
            lambda t: abuse_requests(quic, rng, t, cases=cases, seconds=budget["requests"]),
        )
        # Last: without address validation a flood keeps handshake slots busy after it ends,
        # which would keep the other phases' cases from being delivered at all.
        await phase("flood", flood)
        if meeting is not None:
            alive, detail = await bystander_alive(meeting)
            report.checks.append(Check("bystander participant", alive, detail))
        nursery.cancel_scope.cancel()
    report.checks[:0] = await final_checks(targets, access)
    return report


# --- command line ----------------------------------------------------------------------------
def _endpoint_of(url: str, scheme: str) -> tuple[str, int, str]:
    parts = urllib.parse.urlsplit(url if "://" in url else f"{scheme}://{url}")
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"{url!r}: give host and port")
    return ensure_loopback(parts.hostname), parts.port, parts.path


def parse_args(argv: Sequence[str] | None = None) -> tuple[Targets, Options, bool]:
    """(targets, options, json). Raises SystemExit(2) for bad options and NotLoopback."""
    d = Targets.defaults()
    o = Options()
    p = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--gc", default=d.api_url, help="GC URL (HTTPS on TCP and HTTP/3 on UDP)")
    p.add_argument("--page", default=d.page_url, help="page URL ('' if there is none)")
    p.add_argument(
        "--signal", default=endpoint_url("https", d.signal) + SIGNAL_PATH, help="MC signaling URL"
    )
    p.add_argument(
        "--media", default=endpoint_url("https", d.media) + MEDIA_PATH, help="MH media URL"
    )
    p.add_argument(
        "--grpc",
        default=",".join(f"{e.host}:{e.port}" for e in d.grpc),
        help="GC,MC,MH gRPC host:port",
    )
    p.add_argument(
        "--ops", default=",".join(f"{e.host}:{e.port}" for e in d.ops), help="MC,MH ops host:port"
    )
    p.add_argument("--budget-s", type=float, default=o.budget_s, help="seconds for all phases")
    p.add_argument("--cases", type=int, default=o.cases, help="cases per phase")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--flood-rate", type=float, default=o.flood_rate, help="Initials/s")
    p.add_argument("--sources", type=int, default=o.sources, help="spoofed source addresses")
    p.add_argument("--client-id", default="")
    p.add_argument("--client-secret", default="")
    p.add_argument("--cert-sha256", default="", help="the certificate pin (hex)")
    p.add_argument("--json", action="store_true", help="also print a JSON summary line last")
    a = p.parse_args(argv)
    try:
        gc_host, gc_port, _ = _endpoint_of(a.gc, "https")
        signal = _endpoint_of(a.signal, "https")
        media = _endpoint_of(a.media, "https")
        page = _endpoint_of(a.page, "http") if a.page else None
        grpc = [_endpoint_of(x, "http") for x in a.grpc.split(",") if x]
        ops = [_endpoint_of(x, "http") for x in a.ops.split(",") if x]
        names = ("GC", "MC", "MH")
        targets = Targets(
            gc=Endpoint("GC", gc_host, gc_port),
            signal=Endpoint("MC", signal[0], signal[1]),
            media=Endpoint("MH", media[0], media[1]),
            page=Endpoint("page", page[0], page[1]) if page else None,
            grpc=tuple(
                Endpoint(f"{names[i] if i < 3 else i} gRPC", h, port)
                for i, (h, port, _) in enumerate(grpc)
            ),
            ops=tuple(
                Endpoint(f"{names[i + 1] if i < 2 else i} ops", h, port)
                for i, (h, port, _) in enumerate(ops)
            ),
            signal_path=signal[2] or SIGNAL_PATH,
            media_path=media[2] or MEDIA_PATH,
        )
        options = Options(
            budget_s=a.budget_s,
            cases=max(1, a.cases),
            seed=a.seed,
            flood_rate=a.flood_rate,
            sources=a.sources,
            client_id=a.client_id,
            client_secret=a.client_secret,
            cert_sha256=bytes.fromhex(a.cert_sha256),
        )
    except (ValueError, NotLoopback) as exc:
        p.error(str(exc))
    return targets, options, a.json


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    targets, options, as_json = parse_args(argv)
    print(
        f"{PROG}: {', '.join(f'{e.name} {e.host}:{e.port}' for e in targets.endpoints())}",
        file=out,
        flush=True,
    )
    report = trio.run(
        lambda: run_hostile(
            targets, options, progress=lambda line: print(line, file=out, flush=True)
        )
    )
    print(report.text(), file=out)
    if as_json:
        print(json.dumps(report.summary(), sort_keys=True), file=out)
    out.flush()
    return EXIT_OK if report.ok else EXIT_DEAD


if __name__ == "__main__":
    sys.exit(main())
