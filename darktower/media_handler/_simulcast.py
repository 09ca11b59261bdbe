"""Simulcast layer selection and switching (docs/protocol.md §7). Sans-IO.

Each layer of a simulcast video is its own media stream whose id is the layer id. A subscriber
gets one layer: :func:`choose_layer` picks it, and a :class:`LayerSwitcher` per (subscriber,
simulcast video) forwards that layer's frames, moving to a new layer only at one of its key
frames so that the subscriber's decoder never sees a delta without its reference.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs

from darktower.frames import FrameType
from darktower.model import StreamId


@attrs.frozen(slots=True)
class Layer:
    """A simulcast layer, as the contract's ``SimulcastLayer``; ``max_bitrate`` in bits/s
    (0: not given)."""

    layer_id: StreamId
    width: int
    height: int
    max_bitrate: int


def _rank(layer: Layer) -> tuple[int, int, str]:
    # Higher resolution is the higher layer; bitrate, then id, break ties deterministically.
    return (layer.width * layer.height, layer.max_bitrate, layer.layer_id)


def _fits(layer: Layer, budget: int | None) -> bool:
    return budget is None or layer.max_bitrate <= budget


def choose_layer(
    layers: Iterable[Layer],
    preferred: StreamId | str = "",
    max_bitrate: int = 0,
    available_bitrate: int | None = None,
) -> StreamId:
    """The layer to send a subscriber.

    The budget is the smaller of the subscriber's ``max_bitrate`` (0: no limit, the protobuf
    default) and the estimated ``available_bitrate`` (None: unknown). Returns the ``preferred``
    layer if it exists and fits the budget, else the highest layer that fits, else the lowest.
    A layer without a ``max_bitrate`` always fits. Raises ``ValueError`` if there are no layers.
    """
    ordered: Sequence[Layer] = sorted(layers, key=_rank)
    if not ordered:
        raise ValueError("a simulcast video needs at least one layer")
    limits = [b for b in (max_bitrate or None, available_bitrate) if b is not None]
    budget = min(limits) if limits else None
    for layer in ordered:
        if layer.layer_id == preferred and _fits(layer, budget):
            return layer.layer_id
    for layer in reversed(ordered):
        if _fits(layer, budget):
            return layer.layer_id
    return ordered[0].layer_id


class LayerSwitcher:
    """Which layer's frames one subscriber receives.

    ``current`` is the layer being forwarded (None until the first key frame); ``target`` the one
    wanted. :meth:`on_frame` forwards only frames of ``current``; while ``target`` differs, a key
    frame of ``target`` makes it current (that key frame is forwarded, the old layer's frames are
    not, from then on). Each new target raises one key frame request for it
    (:meth:`take_key_frame_request`) so that the switch need not wait for the publisher's next
    periodic key frame; the caller throttles it.
    """

    __slots__ = ("_request", "current", "target")

    def __init__(self, target: StreamId) -> None:
        self.current: StreamId | None = None
        self.target = target
        self._request: StreamId | None = target

    @property
    def switching(self) -> bool:
        return self.current != self.target

    def set_target(self, layer_id: StreamId) -> None:
        """Aim for ``layer_id``; setting the current layer back cancels a pending switch."""
        if layer_id == self.target:
            return
        self.target = layer_id
        self._request = layer_id if layer_id != self.current else None

    def on_frame(self, layer_id: StreamId, frame_type: FrameType) -> bool:
        """Whether a frame of ``layer_id`` goes to this subscriber."""
        if layer_id == self.target and self.current != layer_id:
            if frame_type != FrameType.VIDEO_KEY:
                return False
            self.current = layer_id
            self._request = None
            return True
        return layer_id == self.current

    def take_key_frame_request(self) -> StreamId | None:
        """The layer a key frame is needed from, once per target; then None."""
        request, self._request = self._request, None
        return request if request is not None and request != self.current else None

    def ask_again(self, layer: StreamId) -> None:
        """A request taken could not be sent yet (throttled): raise it again, if still due."""
        if layer == self.target and layer != self.current:
            self._request = layer
