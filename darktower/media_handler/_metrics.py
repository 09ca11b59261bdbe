"""The Media Handler's Prometheus metrics: counters and gauges in one Registry, rendered on
/metrics by the ops listener (the Telemetry stream to the MCs is ``_telemetry.py``)."""

from __future__ import annotations

from darktower.metrics import Registry

from ._queue import DropReason, QueuedFrame

# A frame's time in the MH, arrival to its last byte sent (seconds): fine below 10 ms, the
# latency goal of docs/architecture.md §5.1.
RESIDENCE_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip


class MediaMetrics:
    """The MH's counters and gauges in one Registry (rendered on /metrics)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.frames_received = registry.counter(
            "darktower_mh_frames_received_total", "frames received from publishers"
        )
        self.bytes_received = registry.counter(
            "darktower_mh_bytes_received_total", "bytes received from publishers (headers incl.)"
        )
        self.frames_forwarded = registry.counter(
            "darktower_mh_frames_forwarded_total", "frames written to subscribers"
        )
        self.frames_direct = registry.counter(
            "darktower_mh_frames_direct_total",
            "of the frames forwarded, those written from the publisher's task while their "
            "subscription's task was parked (docs/architecture.md §4.3)",
        )
        self.bytes_forwarded = registry.counter(
            "darktower_mh_bytes_forwarded_total", "bytes written to subscribers (headers incl.)"
        )
        self.frames_dropped = registry.counter(
            "darktower_mh_frames_dropped_total", "frames not delivered, by reason", ("reason",)
        )
        for reason in DropReason:
            self.frames_dropped.inc(0, reason.value)
        self.stream_errors = registry.counter(
            "darktower_mh_stream_errors_total",
            "publisher streams reset with STREAM_ERROR, by cause",
            ("cause",),
        )
        self.sessions_refused = registry.counter(
            "darktower_mh_sessions_refused_total", "media CONNECTs refused, by status", ("status",)
        )
        self.key_frame_requests = registry.counter(
            "darktower_mh_key_frame_requests_total", "key frame requests sent to the MC"
        )
        # Data messages (docs/protocol.md §18.4, _data.py); the drop reasons are set there.
        self.data_received = registry.counter(
            "darktower_mh_data_received_total", "data message datagrams received (not padding)"
        )
        self.data_sent = registry.counter(
            "darktower_mh_data_sent_total", "data message copies sent to recipients"
        )
        self.data_dropped = registry.counter(
            "darktower_mh_data_dropped_total",
            "data messages (or copies of one) not relayed, by reason",
            ("reason",),
        )
        self.frame_residence = registry.histogram(
            "darktower_mh_frame_residence_seconds",
            "time from a frame's arrival at the MH to its last byte handed to the socket, for "
            "each subscriber (on the qh3 core: to the end of the first flush after its write)",
            buckets=RESIDENCE_BUCKETS_S,
        )
        self.residence_unmeasured = registry.counter(
            "darktower_mh_frame_residence_unmeasured_total",
            "frames sent whose residence was not measured (their connection had 256 writes "
            "waiting to leave: the slowest, missing from the histogram)",
        )
        self.telemetry_dropped = registry.counter(
            "darktower_mh_telemetry_dropped_total", "telemetry events dropped (MC too slow)"
        )
        self.rooms = registry.gauge("darktower_mh_rooms", "rooms on this MH")
        self.participants = registry.gauge("darktower_mh_participants", "registered participants")
        self.connected = registry.gauge(
            "darktower_mh_participants_connected", "participants with a media connection"
        )
        self.streams = registry.gauge("darktower_mh_streams", "registered streams (layers)")
        self.subscriptions = registry.gauge("darktower_mh_subscriptions", "live subscriptions")
        self.publish_buffered = registry.gauge(
            "darktower_mh_publish_buffered_bytes",
            "bytes of partial frames the publish streams hold (capped per participant)",
        )
        # QUIC packets of the participants' connections, counted between telemetry reports:
        # "out" = ours (lost: declared lost by QUIC's loss detection), "in" = the peers'
        # (lost: missing from the packet numbers received).
        self.quic_packets = registry.counter(
            "darktower_mh_quic_packets_total",
            "QUIC packets of media connections, by direction",
            ("direction",),
        )
        self.quic_packets_lost = registry.counter(
            "darktower_mh_quic_packets_lost_total",
            "QUIC packets of media connections lost, by direction",
            ("direction",),
        )
        for direction in ("in", "out"):
            self.quic_packets.inc(0, direction)
            self.quic_packets_lost.inc(0, direction)
        self.quic_loss = registry.gauge(
            "darktower_mh_quic_packet_loss_ratio",
            "fraction of media connections' QUIC packets lost since the previous report",
        )
        # Media processing (docs/architecture.md §10).
        self.processing_jobs = registry.gauge(
            "darktower_mh_processing_jobs",
            "jobs running on media processors, by kind and processor",
            ("kind", "processor"),
        )
        self.processing_refused = registry.counter(
            "darktower_mh_processing_refused_total",
            "recordings, transcodes and mixes refused, by error",
            ("error",),
        )
        self.processing_failures = registry.counter(
            "darktower_mh_processing_failures_total",
            "processor calls that failed (unavailable, deadline) and jobs lost (their "
            "processor died or dropped their media connection), by processor and what",
            ("processor", "what"),
        )
        self.processing_key_frames = registry.counter(
            "darktower_mh_processing_key_frame_requests_total",
            "key frame requests for a job's output sent to its processor, or dropped",
            ("outcome",),
        )

    def sent(self, batch: list[QueuedFrame[memoryview]], now: float) -> None:
        """A batch written to a subscriber has left (WebTransportSendStream.when_sent)."""
        observe = self.frame_residence.observe
        for item in batch:
            observe(now - item.received_at)
