"""The session's publications across media connections (docs/protocol.md §13).

A :class:`Publishing` keeps the publications of one session and which media connection their
streams are on: a new publication gets its streams on the current connection, and every
publication gets new ones when the media connection is replaced. Streams are opened one
publication at a time, so a publication is never given two sets on one connection. After a
rejoin every publication is published again at the new MC (docs/protocol.md §13).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
import trio

from darktower.errors import Conflict, DarkTowerError
from darktower.model import StreamType
from darktower.protocol import stream_type_to_pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._e2ee import Encryption
from ._events import SimulcastLayer, stream_metadata
from ._publication import Publication
from ._seams import MediaLink
from ._streams import SessionState


class Publishing:
    """``publications``: stream id → :class:`Publication` (the session's public mapping)."""

    def __init__(self, e2ee: Encryption) -> None:
        self._e2ee = e2ee  # gives the media publishers their encryptor (docs/protocol.md §16)
        self.publications: dict[str, Publication] = {}
        self._bound: dict[str, MediaLink] = {}  # stream id → the connection of its streams
        self._unannounced: set[str] = set()  # not published at the MC of a rejoin yet
        self._lock = trio.Lock()

    def new(
        self,
        session: SessionState,
        close: Callable[[Publication], Awaitable[None]],
        stream_type: StreamType,
        stream_id: str | None,
        simulcast_layers: Sequence[SimulcastLayer],
        described: Mapping[str, Any],
    ) -> Publication:
        """A publication as :meth:`MeetingSession.publish` describes it (not published yet):
        ``stream_id`` a fresh UUID if None, a layer without an id given one; ``described``
        the rest of its ``stream_metadata``."""
        sid = stream_id or str(uuid.uuid4())
        layers = [
            layer if layer.layer_id else attrs.evolve(layer, layer_id=str(uuid.uuid4()))
            for layer in simulcast_layers
        ]
        metadata = stream_metadata(stream_type, layers=layers, **described)
        wires = [la.layer_id for la in layers] or [sid]
        return Publication(
            session, sid, stream_type, {}, close=close, wires=wires, metadata=metadata
        )

    def add(self, publication: Publication) -> None:
        self.publications[publication.stream_id] = publication

    def remove(self, publication: Publication) -> None:
        self.publications.pop(publication.stream_id, None)
        self._bound.pop(publication.stream_id, None)

    async def attach(self, publication: Publication, media: MediaLink) -> None:
        """Open ``publication``'s media streams on ``media`` unless they are there already.
        Raises the transport's Broken errors (that connection went: the next one attaches)."""
        async with self._lock:
            if publication.closed or self._bound.get(publication.stream_id) is media:
                return
            publishers = {wire: await media.publish(wire) for wire in publication.wires}
            for publisher in publishers.values():
                publisher.encryptor = self._e2ee.encryptor
            publication._rebind(publishers)
            self._bound[publication.stream_id] = media

    def pause(self) -> None:
        """The media connection is gone: every publication follows the reconnection policy."""
        for publication in self.publications.values():
            publication._pause()

    def rejoined(self) -> None:
        """A rejoin: every publication is to be published again at the new MC."""
        self._unannounced = set(self.publications)

    async def republish(
        self, request: Callable[[sig.ClientMessage], Awaitable[sig.ServerMessage]]
    ) -> None:
        """After a rejoin, with ``request`` (its signaling connection's): publish every
        publication again, with its stream id and metadata; one the new MC refuses is closed
        (its send_frame raises ClosedResourceError). Raises the transport's Broken errors (the
        rest is published again on the next call)."""
        for stream_id in sorted(self._unannounced):
            publication = self.publications.get(stream_id)
            self._unannounced.discard(stream_id)
            if publication is None:
                continue
            try:
                await request(announcement(publication))
            except Conflict:
                pass  # published already: a request the MC took before its connection broke
            except DarkTowerError:
                publication.closed = True
                self.remove(publication)
            except BaseException:
                self._unannounced.add(stream_id)
                raise

    async def rebind(self, media: MediaLink) -> list[str]:
        """Give every publication its streams on the new connection ``media``; returns the
        video publications that had streams before (each needs a key frame now)."""
        needs_key = []
        for publication in list(self.publications.values()):
            rebound = publication.stream_id in self._bound
            await self.attach(publication, media)
            if rebound and publication.stream_type is not StreamType.AUDIO:
                needs_key.append(publication.stream_id)
        return needs_key


def announcement(publication: Publication) -> sig.ClientMessage:
    """The PublishStream that announces ``publication`` to the MC."""
    return sig.ClientMessage(
        publish=sig.PublishStream(
            stream_id=publication.stream_id,
            stream_type=stream_type_to_pb(publication.stream_type),
            metadata=publication.metadata,
        )
    )


__all__ = ["Publishing", "announcement"]
