"""The QUIC core's own CPU per media packet, in memory: the floor under the MH's CPU per frame.

No sockets, no trio, no MH: two connections of the core the servers use (aioquic's through
``CreditedQuicConnection``, qh3's through ``Qh3Connection``, with the project's settings) do
their handshake in memory; then the server writes 1,000-byte frames round-robin on ten uni
streams (a subscriber of five publishers' video and audio), one frame per packet, and the
client acknowledges each packet, as our clients do (their ACK delay is 1 ms and a meeting's
frames are milliseconds apart). Four costs are timed one call at a time with
``time.process_time`` (the timer's own cost, measured, is taken out):

* ``send_us``: the server's ``send_stream_data`` + ``datagrams_to_send`` (one packet built and
  protected): what the MH pays for each frame it delivers;
* ``ack_receive_us``: the server's ``receive_datagram`` of the client's ACK;
* ``receive_us``: the client's ``receive_datagram`` of the data packet (what the MH pays for a
  publisher's packet);
* ``ack_send_us``: the client's ``datagrams_to_send`` of its ACK.

``per_delivered_frame_us`` = send + ack_receive + (receive + ack_send) / 5: one packet and one
ACK per delivered frame, a publisher's packet and the ACK it gets shared by its five
subscribers. ``participants_per_core_ceiling`` = 1e6 / (that x 400): a participant of
``media_fanout.py``'s 6-person meeting is delivered 80 frames/s from each of five others; an MH
whose only work were its QUIC core's could serve no more per core. Under load our clients
acknowledge several packets at once (one ACK per read of the socket), so the MH takes fewer
ACKs than that; ``send_only_participants_per_core`` = 1e6 / (send x 400) leaves them and the
publishers' packets out: the bound even an MH that received nothing would meet. The gap to
the MH's ``meeting_server_cpu_us`` is the rest: system calls, the trio driver, routing.

The cores are interleaved round by round (A B / B A); the default core's figures carry their
plain names, qh3's the same prefixed ``qh3_``, and ``aioquic_vs_qh3_cpu_ratio`` is the median of
the per-round ratios of their ``per_delivered_frame_us``.

    python benchmarks/quic_core.py [--quick] [--rounds N] [--quic-core both]
"""

from __future__ import annotations

import pathlib
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks._bench import (
    add_quic_core,
    core_prefix,
    emit,
    parser,
    quic_cores,
    ratio_summary,
    round_order,
    summary,
)

STREAMS = 10  # five publishers' video and audio
FRAME = b"f" * 1000
SUBSCRIBERS = 5  # of each publisher, in the 6-person meeting
DELIVERED_PER_PARTICIPANT_S = 5 * 80  # 30 video + 50 audio frames/s from each of five others
CLIENT = ("127.0.0.2", 40000)
SERVER = ("127.0.0.1", 4433)
STEP_S = 0.0025  # between two frames: a meeting's pace


class Pair:
    """A server and a client connection of ``core`` after their handshake, with STREAMS uni
    streams the server has opened."""

    def __init__(self, core: str, cert: Any) -> None:
        from darktower.transport import TransportLimits
        from darktower.transport._core import load_core
        from darktower.transport._tls import quic_configuration

        limits = TransportLimits(quic_core=core)
        make = load_core(core).connection_class
        extra = {"consumed": lambda _sid: None, "window": limits.stream_receive_window}
        self.client = make(
            configuration=quic_configuration(limits, is_client=True, verify=False), **extra
        )
        self.now = 1.0
        self.client.connect(SERVER, now=self.now)
        self.server = make(
            configuration=quic_configuration(limits, is_client=False, tls=cert),
            original_destination_connection_id=self.client.original_destination_connection_id,
            **extra,
        )
        self._pump()
        self.streams = []
        for _ in range(STREAMS):
            sid = self.server.get_next_available_stream_id(is_unidirectional=True)
            self.server.send_stream_data(sid, b"s")
            self.streams.append(sid)
        self._pump()
        self.sent = 0

    def _pump(self) -> None:
        for _ in range(20):
            moved = False
            for data, _ in self.client.datagrams_to_send(now=self.now):
                self.server.receive_datagram(data, CLIENT, now=self.now)
                moved = True
            for data, _ in self.server.datagrams_to_send(now=self.now):
                self.client.receive_datagram(data, SERVER, now=self.now)
                moved = True
            self._drain()
            if not moved:
                return
            self.now += 0.001
        raise RuntimeError("the handshake did not settle")

    def _drain(self) -> None:
        while self.client.next_event() is not None:
            pass
        while self.server.next_event() is not None:
            pass

    def run(self, frames: int, clock_cost: float) -> dict[str, float]:
        """``frames`` frames; each cost's mean in µs."""
        cpu = time.process_time
        server, client = self.server, self.client
        totals = {"send": 0.0, "receive": 0.0, "ack_send": 0.0, "ack_receive": 0.0}
        packets = acks = 0
        for i in range(frames):
            self.now += STEP_S
            now = self.now
            t0 = cpu()
            server.send_stream_data(self.streams[i % STREAMS], FRAME)
            out = server.datagrams_to_send(now=now)
            t1 = cpu()
            totals["send"] += t1 - t0 - clock_cost
            for data, _ in out:
                t0 = cpu()
                client.receive_datagram(data, SERVER, now=now)
                totals["receive"] += cpu() - t0 - clock_cost
            packets += len(out)
            later = now + 0.002  # past the client's ACK delay
            t0 = cpu()
            back = client.datagrams_to_send(now=later)
            totals["ack_send"] += cpu() - t0 - clock_cost
            for data, _ in back:
                t0 = cpu()
                server.receive_datagram(data, CLIENT, now=later)
                totals["ack_receive"] += cpu() - t0 - clock_cost
            acks += len(back)
            self._drain()
        if packets < frames or acks < frames:
            raise RuntimeError(f"{packets} packets and {acks} ACKs for {frames} frames")
        self.sent += frames
        out_us = {k: v / frames * 1e6 for k, v in totals.items()}
        out_us["per_delivered_frame"] = (
            out_us["send"]
            + out_us["ack_receive"]
            + (out_us["receive"] + out_us["ack_send"]) / SUBSCRIBERS
        )
        return out_us


def _clock_cost() -> float:
    """What one ``time.process_time`` pair adds to a timed call (the smallest of many)."""
    cpu = time.process_time
    best = 1.0
    for _ in range(5):
        n = 20_000
        t0 = time.perf_counter()
        for _ in range(n):
            cpu()
            cpu()
        best = min(best, (time.perf_counter() - t0) / n / 2)
    return best


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    add_quic_core(p)
    args = p.parse_args()
    cores = quic_cores(args.quic_core)
    rounds = args.rounds or (1 if args.quick else 5)
    frames = 1_000 if args.quick else 4_000
    from darktower.transport import generate_dev_certificate

    cert = generate_dev_certificate()
    clock_cost = _clock_cost()
    pairs = {core: Pair(core, cert) for core in cores}
    for pair in pairs.values():
        pair.run(200, clock_cost)  # warm-up
    samples: dict[str, list[dict[str, float]]] = {core: [] for core in cores}
    for i in range(max(rounds, 1)):
        for core in round_order(cores, i):
            if pairs[core].sent > 50_000:  # far from any stream or packet-number limit
                pairs[core] = Pair(core, cert)
            samples[core].append(pairs[core].run(frames, clock_cost))
    figures: dict[str, Any] = {"frames_per_round": frames, "rounds": rounds}
    for core, rows in samples.items():
        pre = core_prefix(core)
        for key in ("send", "ack_receive", "receive", "ack_send", "per_delivered_frame"):
            s = summary([r[key] for r in rows])
            figures[f"{pre}{key}_us"] = s["median"]
            figures[f"{pre}{key}_us_min"] = s["min"]
            figures[f"{pre}{key}_us_max"] = s["max"]
        per_frame = figures[f"{pre}per_delivered_frame_us"]
        ceiling = 1e6 / (per_frame * DELIVERED_PER_PARTICIPANT_S)
        figures[f"{pre}participants_per_core_ceiling"] = ceiling
        send_only = 1e6 / (figures[f"{pre}send_us"] * DELIVERED_PER_PARTICIPANT_S)
        figures[f"{pre}send_only_participants_per_core"] = send_only
        print(
            f"[{core}] send {figures[pre + 'send_us']:.1f} µs, ACK in "
            f"{figures[pre + 'ack_receive_us']:.1f} µs, receive {figures[pre + 'receive_us']:.1f}"
            f" µs, ACK out {figures[pre + 'ack_send_us']:.1f} µs; per delivered frame "
            f"{per_frame:.1f} µs: at most {ceiling:.0f} participants per core "
            f"({send_only:.0f} counting the packets sent only)",
            flush=True,
        )
    if len(cores) > 1:
        ratio = ratio_summary(
            [r["per_delivered_frame"] for r in samples["aioquic"]],
            [r["per_delivered_frame"] for r in samples["qh3"]],
        )
        figures["aioquic_vs_qh3_cpu_ratio"] = ratio["median"]
        figures["aioquic_vs_qh3_cpu_ratio_min"] = ratio["min"]
        figures["aioquic_vs_qh3_cpu_ratio_max"] = ratio["max"]
    emit("quic_core", figures)


if __name__ == "__main__":
    main()
