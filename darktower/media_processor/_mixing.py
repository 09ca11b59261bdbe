"""A mix job (docs/architecture.md §10): every source's Opus into one stream per listener,
without the listener's own (mix-minus), 48 kHz, 20 ms frames. The reader queues the sources'
packets (bounded, the drop policy of any job); the ``mix`` task wakes every MIX_TICK_S, hands
what arrived and one tick to the mixer on the job's codec thread, and gives each listener's
packet to that output's ``send`` task (its own small queue: a listener whose stream is blocked
loses its packets, never stalls the others' mix).
"""

from __future__ import annotations

import time
import uuid

import trio

from darktower.client import MediaClient, MediaPublisher
from darktower.errors import InvalidRequest
from darktower.frames import FrameType
from darktower.model import LeaveReason
from darktower.nurseries import Participant
from darktower.processing import Mixer, normalize_codec
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import processing_pb2 as pb
from darktower.transport import StreamReset

from ._limits import MIX_TICK_S
from ._pipeline import Assembler, CodecThread, Drops, Encoded, FrameQueue, Progress

# Packets waiting for one listener's stream. Full: the packet is dropped ("output_full").
OUTPUT_QUEUE = 8


def _check_source(source: pb.JobSource) -> None:
    if source.stream_type != common_pb2.AUDIO or normalize_codec(source.codec or "Opus") != "Opus":
        raise InvalidRequest(f"a mix takes Opus audio streams, not {source.stream_id}")


def _check_output(output: pb.MixOutput) -> None:
    try:
        uuid.UUID(output.output_stream_id)
    except ValueError as exc:
        raise InvalidRequest("a mix output needs a stream id (a UUID)") from exc
    if not output.listener_participant_id:
        raise InvalidRequest("a mix output names its listener")


class _Output:
    def __init__(self, output: pb.MixOutput, serial: int) -> None:
        self.listener = output.listener_participant_id
        self.stream_id = output.output_stream_id
        self.serial = serial  # names its send task (a listener may come back)
        self.send, self.receive = trio.open_memory_channel[tuple[int, bytes]](OUTPUT_QUEUE)
        self.started = False
        self.scope = trio.CancelScope()


class MixJob:
    kind = "mix"

    def __init__(self, request: pb.StartJobRequest) -> None:
        spec = request.mix
        for source in spec.sources:
            _check_source(source)
        for output in spec.outputs:
            _check_output(output)
        self.drops = Drops()
        self.codec = CodecThread()
        self.frames_in = 0
        self.frames_out = 0
        self.progress = Progress()  # replaced by the Jobs that run it
        self._serial = 0
        self._sources = {s.stream_id: s for s in spec.sources}
        self._outputs = {o.listener_participant_id: self._output(o) for o in spec.outputs}
        self._queue = FrameQueue(self.drops)
        self._assembler = Assembler(self.drops)
        self._mixer: Mixer[str, str] | None = None
        # Changes made on the trio thread, applied to the mixer on the codec thread at the
        # next tick, in order; the values are snapshots (the codec thread reads no shared dict).
        self._changes: list[tuple[str, str, tuple[str, ...]]] = []
        self._media: MediaClient | None = None
        self._participant: Participant | None = None
        self._ready = False  # the outputs known at the start are running

    def _output(self, spec: pb.MixOutput) -> _Output:
        self._serial += 1
        return _Output(spec, self._serial)

    def _own(self, listener: str) -> tuple[str, ...]:
        return tuple(s.stream_id for s in self._sources.values() if s.participant_id == listener)

    @staticmethod
    def _open(
        sources: tuple[str, ...], listeners: tuple[tuple[str, tuple[str, ...]], ...]
    ) -> Mixer[str, str]:
        mixer: Mixer[str, str] = Mixer()
        for stream_id in sources:
            mixer.add_source(stream_id)
        for listener, own in listeners:
            mixer.add_listener(listener, own=own)
        return mixer

    async def run(self, media: MediaClient, participant: Participant) -> None:
        self._media, self._participant = media, participant
        listeners = tuple((listener, self._own(listener)) for listener in self._outputs)
        self._mixer = await self.codec.run(self._open, tuple(self._sources), listeners)
        for output in list(self._outputs.values()):
            await self._start_output(output)
        self._ready = True
        await participant.start_stream("mix", self._mix_loop)
        async for frame in media:
            self.frames_in += 1
            encoded = self._assembler.push(frame)
            if encoded is not None and encoded.stream_id in self._sources:
                self._queue.offer(encoded)

    async def _start_output(self, output: _Output) -> None:
        """Publish ``output``'s stream and start its send task (once)."""
        assert self._media is not None and self._participant is not None
        if output.started:
            return
        output.started = True
        publisher = await self._media.publish(output.stream_id)
        await self._participant.start_stream(
            f"send:{output.serial}", self._send_loop, output, publisher
        )

    async def _send_loop(self, output: _Output, publisher: MediaPublisher) -> None:
        """One listener's packets to its stream. Its stream reset by the MH ends this output
        only (counted); a closed session is the job body's to read."""
        try:
            with output.scope:
                async for timestamp_us, packet in output.receive:
                    await publisher.send_frame(FrameType.AUDIO, packet, timestamp_us=timestamp_us)
                    self.frames_out += 1
                    self.progress.notify()
            await publisher.aclose()
        except StreamReset:
            self.drops.add("output_reset")
        except trio.BrokenResourceError:
            pass

    async def _mix_loop(self) -> None:
        tick = trio.current_time()
        while True:
            tick += MIX_TICK_S
            await trio.sleep_until(tick)  # the mix's clock: one 20 ms frame per tick
            batch: list[Encoded] = []
            while True:
                try:
                    batch.append(self._queue.receive.receive_nowait())
                except trio.WouldBlock:
                    break
            changes, self._changes = self._changes, []
            packets = await self.codec.run(self._tick, batch, changes)
            now_us = time.time_ns() // 1000
            for listener, packet in packets.items():
                output = self._outputs.get(listener)
                if output is None:
                    continue
                try:
                    output.send.send_nowait((now_us, packet))
                except trio.WouldBlock:
                    self.drops.add("output_full")
            if trio.current_time() > tick + MIX_TICK_S:  # fell behind: skip, do not burst
                self.drops.add("late_tick")
                tick = trio.current_time()

    def _tick(
        self, batch: list[Encoded], changes: list[tuple[str, str, tuple[str, ...]]]
    ) -> dict[str, bytes]:
        mixer = self._mixer
        assert mixer is not None
        for change, value, own in changes:
            if change == "add_source":
                mixer.add_source(value)
            elif change == "remove_source":
                mixer.remove_source(value)
            elif change == "listener":
                mixer.add_listener(value, own=own)  # new, or its own sources changed
            elif change == "remove_listener":
                mixer.remove_listener(value)
        for frame in batch:
            mixer.push(frame.stream_id, frame.timestamp_us, frame.payload)
        return mixer.tick()

    async def finish(self, reason: LeaveReason) -> None:
        self._queue.close()

    async def update(self, request: pb.UpdateJobRequest) -> None:
        for source in request.add_sources:
            _check_source(source)
        for output in request.add_outputs:
            _check_output(output)
        touched: set[str] = set()  # listeners whose own sources changed
        for source in request.add_sources:
            self._sources[source.stream_id] = source
            self._changes.append(("add_source", source.stream_id, ()))
            touched.add(source.participant_id)
        for stream_id in request.remove_stream_ids:
            gone_source = self._sources.pop(stream_id, None)
            if gone_source is not None:
                touched.add(gone_source.participant_id)
            self._assembler.forget(stream_id)
            self._changes.append(("remove_source", stream_id, ()))
        for listener in request.remove_listener_participant_ids:
            gone = self._outputs.pop(listener, None)
            if gone is not None:
                gone.send.close()
                gone.scope.cancel()
                self._changes.append(("remove_listener", listener, ()))
        added: list[_Output] = []
        for spec in request.add_outputs:
            if spec.listener_participant_id not in self._outputs:
                new = self._outputs[spec.listener_participant_id] = self._output(spec)
                added.append(new)
                touched.add(new.listener)
        for listener in touched & set(self._outputs):
            self._changes.append(("listener", listener, self._own(listener)))
        if self._ready:
            for new in added:
                await self._start_output(new)

    def key_frame(self, output_stream_id: str) -> None:
        pass  # every Opus frame stands alone
