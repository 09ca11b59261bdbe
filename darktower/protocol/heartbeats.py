"""Heartbeat timing, the one place it is defined (sans-IO constants; the services import them).

Two heartbeats run in a deployment (docs/architecture.md):

* MC → GC (``ControllerRegistry.Heartbeat``): the GC asks each MC for
  :data:`MC_HEARTBEAT_INTERVAL_S` in its registration reply (the GC's
  ``--heartbeat-interval-s`` overrides it); the MC uses it until the GC has answered.
* MH → MC (``MediaHandlerHeartbeat``): the MC asks each MH for :data:`MH_HEARTBEAT_INTERVAL_S`;
  the MH uses it if the MC's reply says 0.

The MH beats faster on purpose: an MC places new rooms only on an MH it heard from recently,
and an MH that went silent should stop getting rooms within seconds; the MC hears from its own
few MHs, while the GC hears from every MC of every region and a late beat there costs only
placement of new meetings.

Whoever receives the heartbeat treats the sender as gone after :data:`HEARTBEAT_MISSES` missed
beats: the GC counts the MC ``UNHEALTHY`` (placement skips it, housekeeping expires it and its
meetings become ``CONTROLLER_LOST``), the MC gives that MH no new rooms, and the MC's
``/readyz`` fails when the GC has not answered for as long.
"""

from __future__ import annotations

from typing import Final

HEARTBEAT_MISSES: Final = 3

MC_HEARTBEAT_INTERVAL_S: Final = 5.0
MC_HEARTBEAT_TIMEOUT_S: Final = HEARTBEAT_MISSES * MC_HEARTBEAT_INTERVAL_S

MH_HEARTBEAT_INTERVAL_S: Final = 2.0
MH_HEARTBEAT_TIMEOUT_S: Final = HEARTBEAT_MISSES * MH_HEARTBEAT_INTERVAL_S
