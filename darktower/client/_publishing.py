"""The session's publications across media connections (docs/protocol.md §13).

A :class:`Publishing` keeps the publications of one session and which media connection their
streams are on: a new publication gets its streams on the current connection, and every
publication gets new ones when the media connection is replaced. Streams are opened one
publication at a time, so a publication is never given two sets on one connection.
"""

from __future__ import annotations

import trio

from darktower.model import StreamType

from ._link import MediaLink
from ._streams import Publication


class Publishing:
    """``publications``: stream id → :class:`Publication` (the session's public mapping)."""

    def __init__(self) -> None:
        self.publications: dict[str, Publication] = {}
        self._bound: dict[str, MediaLink] = {}  # stream id → the connection of its streams
        self._lock = trio.Lock()

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
            publication._rebind({wire: await media.publish(wire) for wire in publication.wires})
            self._bound[publication.stream_id] = media

    def pause(self) -> None:
        """The media connection is gone: every publication follows the reconnection policy."""
        for publication in self.publications.values():
            publication._pause()

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


__all__ = ["Publishing"]
