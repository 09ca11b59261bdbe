"""Simulcast layer selection and switching (docs/protocol.md §7). Sans-IO.

Each layer of a simulcast video is its own media stream whose id is the layer id. A subscriber
gets one layer: :func:`choose_layer` picks it, and a :class:`LayerSwitcher` per (subscriber,
simulcast video) forwards that layer's frames, moving to a new layer only at one of its key
frames so that the subscriber's decoder never sees a delta without its reference.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Final

import attrs

from darktower.frames import FrameType
from darktower.model import StreamId


@attrs.frozen(slots=True, cache_hash=True)
class Layer:
    """A simulcast layer, as the contract's ``SimulcastLayer``; ``max_bitrate`` in bits/s
    (0: not given)."""

    layer_id: StreamId
    width: int
    height: int
    max_bitrate: int


def rank(layer: Layer) -> tuple[int, int, str]:
    # Higher resolution is the higher layer; bitrate, then id, break ties deterministically.
    return (layer.width * layer.height, layer.max_bitrate, layer.layer_id)


@functools.lru_cache(maxsize=4096)
def ranked(layers: tuple[Layer, ...]) -> tuple[Layer, ...]:
    """``layers`` lowest first (cached: a publication's layers never change)."""
    return tuple(sorted(layers, key=rank))


@functools.lru_cache(maxsize=4096)
def ranks(layers: tuple[Layer, ...]) -> dict[StreamId, int]:
    """Each layer's place in ``ranked(layers)``, 0 the lowest (cached: do not modify)."""
    return {la.layer_id: i for i, la in enumerate(ranked(layers))}


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
    ordered = ranked(layers if isinstance(layers, tuple) else tuple(layers))
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

    def set_target(self, layer_id: StreamId, *, at_once: bool = False) -> None:
        """Aim for ``layer_id``; setting the current layer back cancels a pending switch.
        ``at_once`` stops forwarding the current layer now (nothing until the target's key
        frame: the path is congested)."""
        if at_once and layer_id != self.current:
            self.current = None
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

    def restart(self) -> None:
        """Frames stopped reaching the subscriber (held back): start again at a key frame of
        the target, asked for once."""
        self.current = None
        self._request = self.target

    def take_key_frame_request(self) -> StreamId | None:
        """The layer a key frame is needed from, once per target; then None."""
        request, self._request = self._request, None
        return request if request is not None and request != self.current else None

    def ask_again(self, layer: StreamId) -> None:
        """A request taken could not be sent yet (throttled): raise it again, if still due."""
        if layer == self.target and layer != self.current:
            self._request = layer


# Hysteresis: a subscriber moves up a layer only once the higher layer has fit its share of
# the estimate, with UP_MARGIN to spare, this long without a break (or at once after a probe
# proved the rate).
UP_HOLD_S: Final = 2.0
UP_MARGIN: Final = 1.1


def layer_bitrate(layers: Iterable[Layer], layer_id: StreamId | None) -> int:
    """The declared ``max_bitrate`` of ``layer_id`` among ``layers`` (0: unknown)."""
    for layer in layers:
        if layer.layer_id == layer_id:
            return layer.max_bitrate
    return 0


def step_up(layers: tuple[Layer, ...], current: StreamId, best: StreamId) -> StreamId:
    """The layer one above ``current``, up to ``best`` (``best`` if ``current`` is not a
    layer or not below it)."""
    places = ranks(layers)
    at, top = places.get(current), places.get(best)
    if at is None or top is None or at >= top:
        return best
    return ranked(layers)[at + 1].layer_id


class LayerChooser:
    """The layer choice of one (subscriber, simulcast video) with hysteresis: down at once
    (the estimate only falls on congestion), up only after the higher layer has fit with
    UP_MARGIN for UP_HOLD_S, or at once when a probe just proved the rate (``proven``)."""

    __slots__ = ("_up", "_up_since")

    def __init__(self) -> None:
        self._up: StreamId | None = None  # the higher layer that fits now
        self._up_since = 0.0

    def choose(
        self,
        layers: tuple[Layer, ...],
        current: StreamId,
        preferred: StreamId | str,
        max_bitrate: int,
        share: int,
        now: float,
        *,
        proven: bool = False,
        hold: bool = True,
    ) -> StreamId:
        """The layer to aim for, given the subscriber's ``share`` of its estimate (bits/s) and
        the layer it aims for now. Without ``hold`` (a probe runs: the path is being tried)
        no layer goes up after its hold; it goes up at the first tick allowed."""
        fitting = choose_layer(layers, preferred, max_bitrate, share)
        places = ranks(layers)
        if current not in places or places[fitting] <= places[current]:
            self._up = None
            return fitting
        if proven:
            self._up = None
            return fitting
        fitting = choose_layer(layers, preferred, max_bitrate, int(share / UP_MARGIN))
        if places[fitting] <= places[current]:
            self._up = None
            return current
        if self._up != fitting:
            self._up, self._up_since = fitting, now
            return current
        if now - self._up_since >= UP_HOLD_S and hold:
            self._up = None
            return fitting
        return current
