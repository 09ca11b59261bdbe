"""A published local stream of a :class:`~darktower.client.MeetingSession`: the frames the
application sends on it, through the reconnection policy (docs/protocol.md §13), dynacast
(§17.3) and the session's microphone and camera switches (§18.1).

It reads whether and why its session ended through :class:`SessionState` and is given a
``close`` callback that withdraws it at the MC; it does not call into the session otherwise.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType

import trio

from darktower.frames import MAX_AUDIO_LEVEL, FrameFlags, FrameType
from darktower.model import StreamType
from darktower.protocol.pb.v1 import common_pb2

from ._dynacast import LayerStates
from ._events import RECONNECT_SEND_WAIT_S, SETTLE_S, LayerFeedback, QualityUpdate
from ._media import MediaPublisher
from ._streams import SessionState, first_of


class Publication:
    """A published local stream, made by :meth:`MeetingSession.publish`: write frames with
    :meth:`send_frame`, withdraw it with :meth:`aclose`.

    It outlives a reconnection: the session gives it new media streams (:meth:`_rebind`) once
    the media connection is back, and :meth:`send_frame` follows the reconnection policy
    meanwhile. ``dropped`` counts the frames that policy dropped.

    Dynacast (docs/protocol.md §17.3): a simulcast layer that no subscriber receives is
    paused (:attr:`paused_layers`, :meth:`layer_active`; a ``QualityUpdate`` with ``layers``
    says so, and :meth:`wait_layers_changed` wakes): what the application sends on it is
    dropped here, counted in ``paused_dropped``, so an application that keeps encoding it
    costs no uplink (better: it stops encoding it); with ``dynacast`` set to False they are
    sent all the same (the MH routes them to nobody) and a resumed layer sends what comes. When the layer is active again the
    session puts a ``KeyFrameRequest`` for that layer id, and the layer sends nothing before
    its key frame (a key frame request of the MH for a paused layer resumes it as well). A
    new media connection makes every layer active again (that MH says anew what it needs).

    Publication state (docs/protocol.md §18): while the session's microphone is muted (or its
    camera off, ``MeetingSession.set_publication``) its audio (camera) publications stay
    published and :meth:`send_frame` drops their frames (``silenced``, counted in
    ``muted_dropped``); a camera turned on again sends nothing before its key frame (the session
    puts a ``KeyFrameRequest``). A host's moderation that ends the stream closes it
    (``ended_by_host``; ``send_frame`` then raises trio.ClosedResourceError).
    """

    def __init__(
        self,
        session: SessionState,
        stream_id: str,
        stream_type: StreamType,
        publishers: Mapping[str, MediaPublisher],
        *,
        close: Callable[[Publication], Awaitable[None]],
        wires: Sequence[str] = (),
        metadata: common_pb2.StreamMetadata | None = None,
    ) -> None:
        self._session = session
        self._close = close  # finishes the media streams and unpublishes at the MC
        self.stream_id = stream_id
        self.stream_type = stream_type
        self.metadata = metadata or common_pb2.StreamMetadata()  # as published (again so)
        # Wire stream ids: the stream's, or one per simulcast layer.
        self.wires = tuple(wires) or tuple(publishers) or (stream_id,)
        self.publishers = dict(publishers)  # wire stream id → its media stream, while connected
        self.layer_ids = tuple(k for k in self.wires if k != stream_id)
        self.closed = False
        self.dropped = 0  # frames dropped by the reconnection policy
        self.paused_dropped = 0  # frames of paused simulcast layers, dropped (dynacast)
        self.dynacast = True  # False: frames of paused layers are sent all the same
        self.silenced = False  # muted (camera off) by the session's own switch
        self.muted_dropped = 0  # frames dropped while silenced
        self.ended_by_host = False  # a host's moderation ended it (closed)
        self._gone = trio.Event()  # set once closed
        # The last QualityUpdate about this stream (what its subscribers can take, each
        # layer's feedback: docs/protocol.md §17.3), None before the first.
        self.quality: QualityUpdate | None = None
        self._layers = LayerStates(self.layer_ids)
        self._live = trio.Event()  # set while every wire has a media stream
        self._paused = trio.Event()  # set while it has none
        self._await_key: set[str] = set()  # video wires that send nothing before a key frame
        if set(self.publishers) >= set(self.wires):
            self._live.set()
        else:
            self._paused.set()

    def _pause(self) -> None:
        """The media connection is gone: frames follow the reconnection policy until
        :meth:`_rebind` (called by the session)."""
        if self._live.is_set():
            self._live = trio.Event()
            self._paused.set()

    def _rebind(self, publishers: Mapping[str, MediaPublisher]) -> None:
        """Media streams on a new media connection: numbering goes on where it stopped, and a
        video wire sends its next frame only once it is a key frame (the subscribers missed
        what the lost connection carried)."""
        for wire, publisher in publishers.items():
            before = self.publishers.get(wire)
            if before is not None:
                publisher.sequence = max(publisher.sequence, before.sequence)
                if self.stream_type is not StreamType.AUDIO:
                    self._await_key.add(wire)
                self._layers.reset()
        self.publishers.update(publishers)
        if set(self.publishers) >= set(self.wires):
            self._paused = trio.Event()
            self._live.set()

    @property
    def paused_layers(self) -> frozenset[str]:
        """The simulcast layers nobody receives now (dynacast; see the class docstring)."""
        return self._layers.paused

    def layer_active(self, layer_id: str) -> bool:
        """Whether anyone may receive ``layer_id`` (False: paused, frames sent on it are
        dropped). Raises ValueError for a layer the stream does not have."""
        if layer_id not in self._layers.layer_ids:
            raise ValueError(f"stream {self.stream_id} has no layer {layer_id!r}")
        return layer_id not in self._layers.paused

    @property
    def layer_changes(self) -> int:
        """How often :attr:`paused_layers` changed (to tell a missed change)."""
        return self._layers.changes

    async def wait_layers_changed(self) -> frozenset[str]:
        """Wait until :attr:`paused_layers` changes next; returns it then. A change before
        the call is not waited for: compare :attr:`layer_changes`, or read the
        ``QualityUpdate`` events. Raises trio.ClosedResourceError once the publication is
        closed (also while waiting), SessionEnded once the session is over. Cancel-safe."""
        self._check_open()
        await first_of(self._layers.changed, self._session.ended)
        self._check_open()
        return self._layers.paused

    def _check_open(self) -> None:
        if self._session.end_reason is not None:
            raise self._session.ended_error()
        if self.closed:
            raise self._closed_error()

    def _closed_error(self) -> trio.ClosedResourceError:
        if self.ended_by_host:
            return trio.ClosedResourceError("publication ended by the host")
        return trio.ClosedResourceError("publication closed")

    def _silence(self, silenced: bool) -> bool:
        """The session's switch for this kind changed (called by the session): returns True
        when a video publication sends again, and then starts at a key frame."""
        resumed = self.silenced and not silenced
        self.silenced = silenced
        if resumed and self.stream_type is not StreamType.AUDIO:
            self._await_key.update(self.wires)
            return True
        return False

    def _end_by_host(self) -> None:
        """A host's moderation ended the stream at the MH, which reset its media streams
        (called by the session): closed, without an UnpublishStream (the MC ended it)."""
        self.closed = self.ended_by_host = True
        self._gone.set()
        self._layers.wake()
        for publisher in self.publishers.values():
            publisher.abort()

    def _feedback(self, layers: Sequence[LayerFeedback]) -> list[str]:
        """A publisher's ``StreamQualityUpdate.layers`` (called by the session): returns the
        layers active again, each of which starts at a key frame."""
        resumed = self._layers.apply(layers)
        if self.dynacast and self.stream_type is not StreamType.AUDIO:
            self._await_key.update(resumed)
        return resumed

    def _key_frame_asked(self, wire: str) -> bool:
        """The MH asked for a key frame of ``wire`` (called by the session): a paused layer
        is active again (someone needs it; its feedback may follow, or have been lost), and
        starts at a key frame. Returns whether ``wire`` waits for a key frame now."""
        resumed = self._layers.resume(wire)
        if resumed and self.dynacast and self.stream_type is not StreamType.AUDIO:
            self._await_key.add(wire)
        return wire in self._await_key

    async def send_frame(
        self,
        frame_type: FrameType,
        payload: bytes,
        *,
        layer_id: str | None = None,
        flags: FrameFlags = FrameFlags.END_OF_FRAME,
        timestamp_us: int | None = None,
        sequence: int | None = None,
        audio_level: int | None = None,
    ) -> bytes:
        """Send one frame (on simulcast layer ``layer_id``, if the stream has layers); return
        its wire bytes, or ``b""`` if the reconnection policy dropped it or its layer is
        paused (dynacast, counted in ``paused_dropped``). An audio frame may carry its
        ``audio_level`` (0..127 in -dBov, 0 the loudest; None: not said) for the MH's active
        speaker (docs/protocol.md §17.1). Waits while QUIC flow
        control is full. In an end-to-end encrypted meeting the payload is encrypted under the
        session's sender key (the header stays in clear; the wire bytes are the encrypted
        frame, one part: END_OF_FRAME set; docs/protocol.md §16).

        Reconnection policy (bounded): while the media connection is being re-established the
        call waits at most ``RECONNECT_SEND_WAIT_S`` (50 ms) for it, then drops the frame; a
        frame whose connection broke under it is dropped too. Once the connection is back, a
        video stream drops its delta frames until the application sends a key frame (the
        session also puts a KeyFrameRequest event for it); audio flows again at once. Every
        drop is counted in ``dropped``.

        Raises SessionEnded once the session is over, ValueError for a layer the stream does
        not have (``layer_id`` is required on a simulcast stream) or, encrypted, for a payload
        over ``darktower.e2ee.MAX_PLAINTEXT``, or for an ``audio_level`` out of range or on a
        frame that is not audio, trio.ClosedResourceError
        after aclose(), the transport's BrokenResourceError (StreamReset) if the MH refused the
        stream while the session lives.
        """
        if self._session.end_reason is not None:
            raise self._session.ended_error()  # the connection may not be closed yet
        if self.closed:
            raise self._closed_error()
        wire = self.stream_id if layer_id is None else layer_id
        if wire not in self.wires:
            raise ValueError(f"stream {self.stream_id} has no layer {layer_id!r}")
        if audio_level is not None and (
            frame_type != FrameType.AUDIO or not 0 <= audio_level <= MAX_AUDIO_LEVEL
        ):
            raise ValueError(f"audio level {audio_level!r}: 0..127 on an audio frame only")
        if self.silenced:
            self.muted_dropped += 1
            await trio.lowlevel.checkpoint()  # a loop that only sends still lets others run
            return b""
        if wire in self._layers.paused and self.dynacast:
            self.paused_dropped += 1
            await trio.lowlevel.checkpoint()
            return b""
        if not self._live.is_set():
            with trio.move_on_after(RECONNECT_SEND_WAIT_S):
                await self._live.wait()
            if self._session.end_reason is not None:
                raise self._session.ended_error()
            if not self._live.is_set():
                self.dropped += 1
                return b""
        if wire in self._await_key:
            if frame_type is FrameType.VIDEO_DELTA:
                self.dropped += 1
                return b""
            self._await_key.discard(wire)
        publisher = self.publishers[wire]
        try:
            return await publisher.send_frame(
                frame_type,
                payload,
                flags=flags,
                timestamp_us=timestamp_us,
                sequence=sequence,
                audio_level=audio_level,
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # Give the session SETTLE_S to learn why: ended, or reconnecting (then the frame
            # went with the connection).
            # A host's moderation resets the stream before the MC says so: closed then.
            with trio.move_on_after(SETTLE_S):
                await first_of(self._session.ended, self._paused, self._gone)
            if self._session.end_reason is not None:
                raise self._session.ended_error() from exc
            if self.closed:
                raise self._closed_error() from exc
            if self._paused.is_set() or self.publishers.get(wire) is not publisher:
                self.dropped += 1
                return b""
            raise

    async def aclose(self) -> None:
        """Finish the media stream(s) and unpublish at the MC. Idempotent; shielded and bounded
        by ``CLOSE_GRACE_S``; errors (session over) are ignored."""
        if self.closed:
            return
        self.closed = True
        self._gone.set()
        self._layers.wake()
        await self._close(self)

    async def __aenter__(self) -> Publication:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


__all__ = ["Publication"]
