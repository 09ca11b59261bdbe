"""The measured parts of benchmarks/media_processing.py that run real processes: recordings
through a real MH and processor, and the SFU's latency beside a busy processor."""

from __future__ import annotations

import os
import pathlib
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

from benchmarks._bench import percentiles, ratio_summary, summary
from benchmarks._fanout_load import (
    AUDIO_FPS,
    KEY_S,
    MEETING_PROCESSES,
    MEETING_WARM_S,
)
from benchmarks._fanout_load import (
    VIDEO_FPS as MEETING_VIDEO_FPS,
)
from benchmarks._fanout_runs import MH, _figures, abba, load_point
from benchmarks._mp_load import AUDIO_FRAME_S, VIDEO_FPS
from benchmarks._mp_runs import (
    START_S,
    TARGET_BITRATE,
    WAIT_POLL_S,
    Processor,
    _cpu_s,
    media_stream,
    new_id,
    place_process,
    register,
    start_publishers,
    stop_all,
)
from darktower.protocol.pb.v1 import processing_pb2 as pb

FRAMES_PER_PARTICIPANT_S = VIDEO_FPS + 1 / AUDIO_FRAME_S


def _source(stream_id: str, pid: str, kind: str, codec: str) -> pb.JobSource:
    from darktower.protocol.pb.v1 import common_pb2

    return pb.JobSource(
        stream_id=stream_id,
        participant_id=pid,
        stream_type=common_pb2.StreamType.Value(kind),
        codec=codec,
    )


# --- recordings -------------------------------------------------------------------------------
def record_part(
    files: tuple[str, str, str],
    media_path: str,
    recordings: str,
    *,
    participants: int,
    processes: int,
    warm: float,
    window: float,
    windows: int,
) -> dict[str, Any]:
    """``participants`` publishers of VP8 640x480@30 + Opus (``processes`` processes) on a
    real MH, each recorded by a job of a real processor; the processor's CPU per recording
    over ``windows`` windows after ``warm`` s."""
    certfile, keyfile, cert_hash = files
    cluster = os.path.dirname(certfile)
    mh = MH(certfile, keyfile)
    processor: Processor | None = None
    publishers: list[subprocess.Popen[str]] = []
    try:
        processor = Processor(cluster, recordings)
        meeting_id = new_id()
        plan: dict[str, list[dict[str, Any]]] = {}
        routes: dict[str, list[str]] = {}
        ids = {f"p{i}": (new_id(), new_id()) for i in range(participants)}
        for pid, (video, audio) in ids.items():
            plan[pid] = [
                media_stream(video, "VIDEO_CAMERA", "VP8"),
                media_stream(audio, "AUDIO", "opus"),
            ]
            plan[f"rec-{pid}"] = []
            routes[video] = routes[audio] = [f"rec-{pid}"]
        urls = register(mh.grpc, cluster, meeting_id, plan, routes)
        processor.start(
            [
                pb.StartJobRequest(
                    job_id=f"rec-{pid}",
                    meeting_id=meeting_id,
                    media_url=urls[f"rec-{pid}"],
                    media_certificate_sha256=bytes.fromhex(cert_hash),
                    recording=pb.RecordingJob(
                        participant_id=pid,
                        participant_name=pid,
                        recording_id=pid,
                        sources=[
                            _source(video, pid, "VIDEO_CAMERA", "VP8"),
                            _source(audio, pid, "AUDIO", "opus"),
                        ],
                    ),
                )
                for pid, (video, audio) in ids.items()
            ]
        )
        specs = [{"url": urls[pid], "video": v, "audio": a} for pid, (v, a) in ids.items()]
        groups = [specs[i::processes] for i in range(processes)]
        publishers = start_publishers(groups, media_path, cert_hash)
        time.sleep(warm)
        samples = [_record_window(processor, mh, participants, window) for _ in range(windows)]
    finally:
        stop_all(publishers)
        if processor is not None:
            processor.close()
        mh.close()
    return {
        key: summary([s[key] for s in samples])
        for key in ("pct", "frames_share", "mh_share", "dropped")
    }


def _record_window(
    processor: Processor, mh: MH, participants: int, window: float
) -> dict[str, float]:
    jobs0 = processor.jobs() or {}
    t0, cpu0, mh0 = time.monotonic(), processor.cpu_s(), _cpu_s(mh.proc.pid)
    time.sleep(window)
    t1, cpu1, mh1 = time.monotonic(), processor.cpu_s(), _cpu_s(mh.proc.pid)
    jobs1 = processor.jobs() or {}
    elapsed = t1 - t0

    def total(jobs: dict[str, Any], what: str) -> float:
        if what == "dropped":
            return float(sum(sum(j.dropped.values()) for j in jobs.values()))
        return float(sum(getattr(j, what) for j in jobs.values()))

    expected = participants * FRAMES_PER_PARTICIPANT_S * elapsed
    return {
        "pct": 100.0 * (cpu1 - cpu0) / elapsed / participants,
        "frames_share": (total(jobs1, "frames_out") - total(jobs0, "frames_out")) / expected,
        "mh_share": (mh1 - mh0) / elapsed,
        "dropped": total(jobs1, "dropped") - total(jobs0, "dropped"),
    }


# --- the SFU beside a busy processor ----------------------------------------------------------
def cpu_ticks() -> dict[int, tuple[int, int]]:
    """{cpu: (busy, total)} jiffies since boot, from /proc/stat."""
    out = {}
    for line in pathlib.Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            ticks = [int(v) for v in values]
            idle = ticks[3] + ticks[4]  # idle, iowait
            out[int(name[3:])] = (sum(ticks[:8]) - idle, sum(ticks[:8]))
    return out


def cpu_busy(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], cpu: int
) -> float:
    """The share of the time ``cpu`` was busy (any process) between two :func:`cpu_ticks`."""
    busy, total = (a - b for a, b in zip(after[cpu], before[cpu], strict=True))
    return busy / total if total else float("nan")


def meeting(mh: MH, cert_hash: str, size: int, warm: float, win: float) -> dict[str, Any]:
    """benchmarks/_fanout_runs.py's meeting with ``size`` participants: each publishes video
    (500 kbit/s at 30 fps) and audio (50 fps) stamped with its send time and subscribes to
    every other; two client processes. Latency at the subscribers, the MH's CPU share."""
    ids = {f"p{i}": (new_id(), new_id()) for i in range(size)}
    plan: dict[str, list[dict[str, Any]]] = {
        pid: [{"stream_id": v, "stream_type": 1}, {"stream_id": a, "stream_type": 0}]
        for pid, (v, a) in ids.items()
    }
    rate = (size - 1) * (MEETING_VIDEO_FPS + AUDIO_FPS)  # frames each participant receives
    specs = [
        {
            "pid": pid,
            "read": "fast",
            "rate": rate,
            "publish": [
                # Encoders are not in step: key frames spread over the key frame period.
                {
                    "stream": v,
                    "kind": "video",
                    "rate": MEETING_VIDEO_FPS,
                    "delay": n * KEY_S / size,
                },
                {"stream": a, "kind": "audio", "rate": AUDIO_FPS},
            ],
        }
        for n, (pid, (v, a)) in enumerate(ids.items())
    ]
    groups = [specs[i::MEETING_PROCESSES] for i in range(MEETING_PROCESSES)]
    point = load_point(mh, cert_hash, plan, groups, warm, win)
    out = _figures(point, list(ids), win)
    out["cpu_share"] = point["cpu_share"]
    out["delivered_share"] = out["frames_per_s"] / (size * rate)
    return out


class BusySide:
    """A processor on ``cpus`` at ``nice`` whose transcode jobs (VP8 640x480@30 → VP9 at
    TARGET_BITRATE, ``transcodes`` of them) read one publisher's video through an MH of their
    own; the publisher and that MH run there too, at the same priority."""

    def __init__(
        self,
        files: tuple[str, str, str],
        media_path: str,
        recordings: str,
        *,
        cpus: set[int],
        nice: int,
        transcodes: int,
    ) -> None:
        certfile, keyfile, self.cert_hash = files
        self.cluster = os.path.dirname(certfile)
        self.transcodes = transcodes
        self.running: list[str] = []
        self.mh = MH(certfile, keyfile)
        self.publishers: list[subprocess.Popen[str]] = []
        self.processor: Processor | None = None
        try:
            place_process(self.mh.proc.pid, cpus, nice)
            self.processor = Processor(
                self.cluster, recordings, cpus=cpus, nice=nice, max_transcodes=transcodes
            )
            self.meeting, self.video = new_id(), new_id()
            plan = {"src": [media_stream(self.video, "VIDEO_CAMERA", "VP8")]}
            urls = register(self.mh.grpc, self.cluster, self.meeting, plan, {})
            spec = [{"url": urls["src"], "video": self.video, "audio": ""}]
            self.publishers = start_publishers(
                [spec], media_path, self.cert_hash, cpus=cpus, nice=nice
            )
        except BaseException:
            self.close()
            raise

    def busy(self, on: bool) -> None:
        """Start the transcodes (returns once each has sent a frame) or stop them."""
        assert self.processor is not None
        if not on:
            if self.running:
                self.processor.stop(self.running)
                self._wait(lambda status: all(status[j].state == "ended" for j in self.running))
                self.running = []
            return
        if self.running:
            return
        jobs = {f"tx-{new_id()[:8]}": new_id() for _ in range(self.transcodes)}
        plan = {job: [media_stream(out, "VIDEO_CAMERA", "VP9")] for job, out in jobs.items()}
        urls = register(self.mh.grpc, self.cluster, self.meeting, plan, {self.video: list(jobs)})
        source = _source(self.video, "src", "VIDEO_CAMERA", "VP8")
        self.processor.start(
            [
                pb.StartJobRequest(
                    job_id=job,
                    meeting_id=self.meeting,
                    media_url=urls[job],
                    media_certificate_sha256=bytes.fromhex(self.cert_hash),
                    transcode=pb.TranscodeJob(
                        source=source,
                        target_codec="VP9",
                        target_bitrate=TARGET_BITRATE,
                        output_stream_id=out,
                    ),
                )
                for job, out in jobs.items()
            ]
        )
        self.running = list(jobs)
        self._wait(lambda status: all(status[j].frames_out > 0 for j in jobs))

    def _wait(self, done: Callable[[dict[str, Any]], bool]) -> None:
        """Until ``done`` holds of the jobs' statuses (bounded)."""
        assert self.processor is not None
        deadline = time.monotonic() + START_S
        while True:
            status = self.processor.jobs() or {}
            if all(j in status for j in self.running) and done(status):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the transcodes: {[status.get(j) for j in self.running]}")
            time.sleep(WAIT_POLL_S)

    def close(self) -> None:
        stop_all(self.publishers)
        if self.processor is not None:
            self.processor.close()
        self.mh.close()


def sfu_part(
    files: tuple[str, str, str],
    media_path: str,
    recordings: str,
    *,
    size: int,
    rounds: int,
    window: float,
    nice: int,
    transcodes: int,
) -> dict[str, Any]:
    """The latency of a ``size``-person meeting's subscribers on an MH, interleaved: A with the
    busy side idle, B with its processor transcoding. The MH and the meeting's clients run on
    the first CPU of this process, the busy side on the last."""
    mine = os.sched_getaffinity(0)
    sfu_cpus, busy_cpus = {min(mine)}, {max(mine)}
    busy = BusySide(files, media_path, recordings, cpus=busy_cpus, nice=nice, transcodes=transcodes)
    mh: MH | None = None
    idle_runs: list[dict[str, Any]] = []
    busy_runs: list[dict[str, Any]] = []
    try:
        os.sched_setaffinity(0, sfu_cpus)  # the MH and the clients started from here inherit it
        certfile, keyfile, cert_hash = files
        mh = MH(certfile, keyfile)
        sfu = mh

        def point(on: bool, runs: list[dict[str, Any]]) -> float:
            busy.busy(on)
            assert busy.processor is not None
            t0, cpu0, ticks0 = time.monotonic(), busy.processor.cpu_s(), cpu_ticks()
            m = meeting(sfu, cert_hash, size, MEETING_WARM_S, window)
            m["processor_share"] = (busy.processor.cpu_s() - cpu0) / (time.monotonic() - t0)
            m["sfu_cpu_busy"] = cpu_busy(ticks0, cpu_ticks(), min(sfu_cpus))
            m["busy_cpu_busy"] = cpu_busy(ticks0, cpu_ticks(), min(busy_cpus))
            runs.append(m)
            return float(m["p99"])

        xs, ys = abba(lambda: point(True, busy_runs), lambda: point(False, idle_runs), rounds)
    finally:
        os.sched_setaffinity(0, mine)
        busy.close()
        if mh is not None:
            mh.close()
    return {
        "ratio": ratio_summary(xs, ys),
        "pooled_ratio": percentiles([x for m in busy_runs for x in m["lat_ms"]])["p99"]
        / percentiles([x for m in idle_runs for x in m["lat_ms"]])["p99"],
        "busy": _side(busy_runs),
        "idle": _side(idle_runs),
        "sfu_cpus": sorted(sfu_cpus),
        "busy_cpus": sorted(busy_cpus),
    }


def _side(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "p99": summary([m["p99"] for m in runs]),
        "p50": summary([m["p50"] for m in runs]),
        "samples": sum(len(m["lat_ms"]) for m in runs),
        "delivered_share": statistics.median(m["delivered_share"] for m in runs),
        "mh_share": statistics.median(m["cpu_share"] for m in runs),
        "processor_share": statistics.median(m["processor_share"] for m in runs),
        "sfu_cpu_busy": statistics.median(m["sfu_cpu_busy"] for m in runs),
        "busy_cpu_busy": statistics.median(m["busy_cpu_busy"] for m in runs),
        "dropped": sum(m["dropped"] for m in runs),
    }
