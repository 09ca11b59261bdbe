"""The load tester, ``python -m darktower.loadtest`` (in the spirit of ``lk load-test``).

It creates ``--meetings`` meetings on a running Dark Tower, joins ``--participants`` synthetic
participants to each (WebTransport signaling to the MC, media to the MH, exactly as a client
does), lets ``--publishers`` of them publish synthetic video and audio whose payloads carry a
sequence number and a send time, subscribes everyone to everyone else's streams, runs for
``--duration`` seconds with a live progress line on stderr, leaves, ends the meetings, and
prints join latency percentiles, frames sent / expected / delivered, drops (expected minus
delivered, and gaps by sequence), delivery latency and errors by kind, also as JSON.

    python -m darktower &                                  # the all-in-one dev stack
    python -m darktower.loadtest --meetings 2 --participants 3 --duration 10

One process drives a few hundred frames per second; ``--processes N`` shares the meetings out
among N worker processes and merges their figures (``_workers.py``). Several load testers on
other machines work too: each creates and ends its own meetings.

Programmatic use::

    stats = Stats()
    summary = await run_loadtest(parse_args([...]), stats, stop=event, progress=sys.stderr)
"""

from ._options import LoadTestSettings, parse_args, validate
from ._payload import VideoPlan, make_payload, read_stamp
from ._run import run_loadtest, summarize
from ._stats import Reservoir, Stats
from ._summary import Summary
from ._target import Target, TargetError, resolve_target
from ._workers import run_workers
from .netfault import DirectionStats, ProxyStats, UdpProxy, open_udp_proxy

__all__ = [
    "DirectionStats",
    "LoadTestSettings",
    "ProxyStats",
    "Reservoir",
    "Stats",
    "Summary",
    "Target",
    "TargetError",
    "UdpProxy",
    "VideoPlan",
    "make_payload",
    "open_udp_proxy",
    "parse_args",
    "read_stamp",
    "resolve_target",
    "run_loadtest",
    "run_workers",
    "summarize",
    "validate",
]
