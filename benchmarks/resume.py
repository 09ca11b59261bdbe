"""Reconnection (docs/protocol.md §13): media after a blackout, the gap of a migration, stale
frames after a stall, and how soon a lost peer is noticed.

The Meeting Controller and the Media Handler run in a child process at their default settings
(14 s idle timeout with a PING every third of it, 15 s resume and media grace, age bounds 500 ms video
and 200 ms audio); the clients run in this one, all on 127.0.0.1. A host publishes video (30 fps,
a key frame every second and whenever the MH asks for one) and audio (50 fps), small payloads.
A witness subscribes to both on a direct path: the baseline. Each *subject* subscribes to both
through two netfault proxies, one in front of the MC's signaling port and one in front of the
MH's media port, and publishes audio of its own (a participant with its microphone on).

1. **Blackouts**: both proxies paused 2-5 s (``--quick``: 1-2 s). ``resume_media_*``: from
   ``resume()`` to the first frame the subject receives; ``resume_success_ratio``: blackouts
   after which media flows again and the session did not end. At the defaults a blackout this
   short is QUIC's own recovery. Interleaved with it, a subject whose client has a 1 s idle
   timeout, so that every blackout is a full reconnection (a resume and a new media connection):
   ``reconnect_media_*``.
2. **Rebinds**: alternately the proxies' service-side ports change (a NAT rebinding) and the
   client moves its two connections to new sockets (``migrate()``, a network switch). The
   longest gap between frames the subject received from 0.5 s before to 1.5 s after
   (``migration_gap_*``), against the witness's over the same windows (``baseline_gap_*``).
   Apart: a receive-only subject's NAT rebinding (``migration_gap_receive_only_*``).
3. **Stall**: a subscriber stops reading its media streams for 20 s, then reads again. It is a
   raw media connection with an 8 KiB stream receive window, so QUIC flow control backs up to
   the MH within a second. ``stall_stale_frames``: frames read afterwards that its own windows
   could not have held (so the MH sent them after it read again) and that are older than their
   age bound, by the header timestamp the host set (one machine, one clock). Old frames its own
   windows held are counted apart (``stall_buffered_stale_frames``).
4. **Loss detection**, during 3: subjects whose paths are paused for good, at the default 14 s
   idle timeout. ``loss_detect_*``: from the pause to the host's ParticipantUpdated RECONNECTING
   (the MC noticed); ``loss_detect_client_*``: to the subject's own Reconnecting event. Also
   during 3, the receive-only rebinds of 2.

    python benchmarks/resume.py [--quick]
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

import trio

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks._bench import emit, parser, percentiles
from benchmarks._resume_peers import (
    MEETING,
    Peer,
    Stack,
    follow_events,
    send_media,
    set_verbose,
    subscribe,
)
from benchmarks._resume_phases import (
    blackouts_phase,
    loss_phase,
    rebind_figures,
    rebinds,
    stall_phase,
)
from benchmarks._resume_server import serve
from benchmarks.media_fanout import udp_rcvbuf_errors
from darktower.client import join_meeting_session
from darktower.model import Role, StreamType


# --- the run --------------------------------------------------------------------------------
async def run(stack: Stack, quick: bool) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        host_cm = join_meeting_session(
            stack.signal_url,
            meeting_id=MEETING,
            join_token=stack.token(Role.HOST),
            participant_name="host",
            server_certificate_hashes=stack.pins,
        )
        witness_cm = join_meeting_session(
            stack.signal_url,
            meeting_id=MEETING,
            join_token=stack.token(),
            participant_name="witness",
            server_certificate_hashes=stack.pins,
        )
        async with host_cm as host_session, witness_cm as witness_session:
            host, witness = Peer(host_session), Peer(witness_session)
            video_pub = await host_session.publish(StreamType.VIDEO_CAMERA)
            audio_pub = await host_session.publish(StreamType.AUDIO)
            streams = (video_pub.stream_id, audio_pub.stream_id)
            nursery.start_soon(follow_events, host, video_pub.stream_id)
            nursery.start_soon(follow_events, witness, "")
            nursery.start_soon(send_media, video_pub, host, "video")
            nursery.start_soon(send_media, audio_pub, host, "audio")
            await subscribe(witness, nursery, streams)
            await witness.steady()

            t0 = time.monotonic()
            await blackouts_phase(stack, nursery, streams, quick, figures)
            print(f"  ({time.monotonic() - t0:.0f} s)", flush=True)
            n = 8 if quick else 40
            runs = await rebinds(stack, witness, streams, ["nat", "migrate"] * (n // 2), True)
            rebind_figures(runs, figures)
            print(f"  ({time.monotonic() - t0:.0f} s)", flush=True)
            receive_only: list[dict[str, Any]] = []

            async def receive_only_rebinds() -> None:
                hows = ["nat"] * (2 if quick else 6)
                receive_only.extend(await rebinds(stack, witness, streams, hows, False))

            async with trio.open_nursery() as during:
                during.start_soon(stall_phase, stack, streams, figures)
                during.start_soon(
                    loss_phase, stack, host, audio_pub.stream_id, 3 if quick else 10, figures
                )
                during.start_soon(receive_only_rebinds)
            for q, value in percentiles([r["gap_ms"] for r in receive_only]).items():
                figures[f"migration_gap_receive_only_{q}_ms"] = value
            print(
                f"receive-only NAT rebinds: {len(receive_only)}; longest gap p99 "
                f"{figures['migration_gap_receive_only_p99_ms']:.0f} ms"
                f"  ({time.monotonic() - t0:.0f} s)",
                flush=True,
            )
            nursery.cancel_scope.cancel()
    return figures


def main() -> None:
    p = parser(__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--serve", nargs=3, help=argparse_hidden())
    p.add_argument("--verbose", action="store_true", help="print every sample")
    args = p.parse_args()
    set_verbose(args.verbose)
    if args.serve:
        serve(*args.serve)
        return
    from darktower.protocol.tokens import (
        JoinTokenIssuer,
        generate_signing_key,
        public_key_pem,
    )
    from darktower.transport import generate_dev_certificate

    tmp = tempfile.mkdtemp(prefix="dt-resume-bench-")
    cert = generate_dev_certificate()
    certfile, keyfile = cert.write(tmp)
    key = generate_signing_key()
    pubkey = pathlib.Path(tmp) / "join.pub.pem"
    pubkey.write_bytes(public_key_pem(key))
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    overflows = udp_rcvbuf_errors()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(certfile), str(keyfile), str(pubkey)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdin is not None
        info = json.loads(server.stdout.readline())
        stack = Stack(
            info["signal"], info["media"], info["mh_ops"], [cert.sha256], JoinTokenIssuer(key)
        )
        figures = trio.run(run, stack, args.quick)
        server.stdin.write("\n")
        server.stdin.flush()
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    figures.update(
        goal_resume_media_p99_ms=1000,
        goal_migration_gap_p99_ms=200,
        goal_resume_success_ratio=1.0,
        goal_stall_stale_frames=0,
        goal_loss_detect_p99_s=15,
        udp_rcvbuf_overflows=udp_rcvbuf_errors() - overflows,
        load_avg_1m_start=load_start,
        load_avg_1m_end=os.getloadavg()[0],
        elapsed_s=time.monotonic() - started,
    )
    emit("resume", figures)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
