"""A caller's word that its Meeting Controller does not answer, checked by the GC itself
(docs/protocol.md §14; docs/decisions.md, "A client's word that its MC is gone is checked,
never obeyed").

A join or a meeting lookup may name the MC the caller could not reach
(``unreachable_controller``: its signaling URL, or its controller id). The word is never
trusted: when it names the meeting's own MC (active there, not draining), the GC calls that MC
(``MeetingControllers.probe``, at most ``PROBE_TIMEOUT_S``; once more when this GC was paused
meanwhile, as a probe that took over ``PROBE_PAUSED_AFTER_S`` shows). Only an MC that does
not answer is marked lost, as its heartbeat timeout would mark it (``Store.expire_controller``:
unless it was heard from since the probe began), so that the join moves the meeting at once
(``_moves.py``).
An MC that answers keeps everything. One probe per controller at a time: every request that
comes meanwhile waits for its result, which is reused for ``PROBE_CACHE_S``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import attrs
import trio

from darktower.errors import NotFound
from darktower.global_controller._controllers import signaling_url
from darktower.global_controller._limits import (
    PROBE_CACHE_S,
    PROBE_PAUSED_AFTER_S,
    PROBE_TIMEOUT_S,
)
from darktower.global_controller.store import ControllerRecord, MeetingRecord, MeetingStatus
from darktower.logs import fields

if TYPE_CHECKING:
    from darktower.global_controller.service import GlobalController

log = logging.getLogger("darktower.gc")


@attrs.define(eq=False)
class _Probe:
    done: trio.Event = attrs.Factory(trio.Event)
    answered: bool = True  # until known otherwise: nothing changes
    finished_at: float = 0.0  # trio's clock


class ControllerProbes:
    """The probes of the GC's Meeting Controllers, one at a time per controller, each result
    kept for ``PROBE_CACHE_S``. Owns no task: a probe runs in the request that started it.

    Holds an entry per controller probed within ``PROBE_CACHE_S`` or being probed (stale ones
    are dropped whenever a probe starts), so at most one per registered controller."""

    def __init__(self, gc: GlobalController) -> None:
        self._gc = gc
        self._probes: dict[str, _Probe] = {}

    async def answers(self, controller: ControllerRecord, meeting: MeetingRecord) -> bool:
        """Whether ``controller`` answers (True too when a probe that would tell was cancelled);
        when it does not, it is marked lost before this returns. Waits for a probe already
        running; reuses a result younger than ``PROBE_CACHE_S``."""
        now = trio.current_time()
        probe = self._probes.get(controller.controller_id)
        if probe is not None and (
            not probe.done.is_set() or now - probe.finished_at < PROBE_CACHE_S
        ):
            await probe.done.wait()
            return probe.answered
        self._forget_stale(now)
        probe = _Probe()
        self._probes[controller.controller_id] = probe
        try:
            probe.answered = await self._probe(controller, meeting)
        except BaseException:
            # Cancelled (the request went away) or the store failed: nothing learnt, and
            # whoever waited goes on as if the MC answered.
            del self._probes[controller.controller_id]
            raise
        finally:
            probe.finished_at = trio.current_time()
            probe.done.set()
        return probe.answered

    def _forget_stale(self, now: float) -> None:
        stale = [
            key
            for key, probe in self._probes.items()
            if probe.done.is_set() and now - probe.finished_at >= PROBE_CACHE_S
        ]
        for key in stale:
            del self._probes[key]

    async def _probe(self, controller: ControllerRecord, meeting: MeetingRecord) -> bool:
        gc = self._gc
        began = datetime.fromtimestamp(gc.now(), UTC)
        for attempt in (1, 2):
            started = trio.current_time()
            if await gc.controllers.probe(controller, meeting, deadline_s=PROBE_TIMEOUT_S):
                return True
            paused = trio.current_time() - started > PROBE_PAUSED_AFTER_S
            if not paused or attempt == 2:
                break
            log.info(
                "probe of a meeting controller outlasted its deadline (this GC was paused): "
                "probed again",
                extra=fields(controller=controller.controller_id),
            )
        if await gc.store.expire_controller(controller.controller_id, began):
            gc.directory.changed()
            log.warning(
                "meeting controller unreachable, as a client said; its meetings are "
                "CONTROLLER_LOST",
                extra=fields(controller=controller.controller_id, meeting=meeting.meeting_id),
            )
        return False


async def check_unreachable(
    gc: GlobalController, meeting: MeetingRecord, hint: str
) -> MeetingRecord:
    """The meeting as it is after checking a caller's word ``hint`` ("" for none) that its MC
    does not answer (see the module docstring): read again when that MC was found unreachable
    (then CONTROLLER_LOST, unless it was heard from meanwhile), else as it was."""
    if not hint or meeting.status is not MeetingStatus.ACTIVE or meeting.controller_id is None:
        return meeting
    try:
        controller = await gc.directory.controller_of(meeting)
    except NotFound:
        return meeting  # gone: the join moves the meeting anyway
    if controller.draining or hint not in (controller.controller_id, signaling_url(controller)):
        return meeting  # the join moves it anyway, or the caller's MC is not the meeting's
    if await gc.probes.answers(controller, meeting):
        return meeting
    return await gc.store.get_meeting(meeting.meeting_id)
