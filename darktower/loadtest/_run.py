"""One load test run: meetings, participants, the phases, the progress line.

Phases: *joining* (every participant joins, publishes and subscribes; bounded by
``--setup-timeout``), *running* (``--duration`` seconds of media), *draining* (publishers
stopped; frames in flight still count, at most DRAIN_S), *leaving* (LeaveRequest, then the
run ends its meetings). A ``stop`` event (Ctrl-C) ends joining or running at once.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Awaitable, Callable
from typing import TextIO

import trio

from darktower.client import GlobalControllerClient
from darktower.errors import DarkTowerError
from darktower.transport import open_http3_client

from ._context import MeetingPlan, RunContext, error_kind, leaves
from ._limits import DRAIN_S, END_MEETINGS_GRACE_S, PROGRESS_INTERVAL_S
from ._options import LoadTestSettings
from ._participant import SimulatedParticipant
from ._payload import VideoPlan
from ._stats import Stats
from ._summary import Summary, progress_line
from ._target import TargetError, resolve_target


def summarize(settings: LoadTestSettings, stats: Stats) -> Summary:
    """The summary of ``stats`` so far (also of an interrupted run)."""
    return Summary.from_stats(
        stats,
        target=settings.target,
        meetings=settings.meetings,
        participants=settings.participants,
        publishers=settings.publishers_per_meeting,
        duration_s=settings.duration,
    )


async def run_loadtest(
    settings: LoadTestSettings,
    stats: Stats,
    *,
    stop: trio.Event | None = None,
    progress: TextIO | None = None,
) -> Summary:
    """Run the load test of ``settings`` against its target, counting into ``stats``.

    Owns every connection and task of the run; returns when every participant has left and
    the meetings are ended. ``stop`` set ends the run early (participants still leave
    cleanly). Cancelled, everything closes at once and ``stats`` holds what was counted.
    Failures of participants are counted in ``stats``, not raised. Raises
    :class:`TargetError` when the target cannot be reached or refuses the credential.
    """
    stop = stop if stop is not None else trio.Event()
    target = await resolve_target(settings)
    pins = list(target.certificate_hashes) or None
    connect = trio.CancelScope(deadline=trio.current_time() + settings.connect_timeout)
    connected = False
    try:
        with connect:
            async with open_http3_client(target.api_url, server_certificate_hashes=pins) as http:
                gc = GlobalControllerClient(http)
                ctx = RunContext(
                    settings=settings,
                    target=target,
                    stats=stats,
                    guest_gc=GlobalControllerClient(http),
                    video=VideoPlan.for_kbps(settings.video_kbps),
                    join_slots=trio.CapacityLimiter(settings.join_concurrency),
                )
                await ctx.rest(lambda: gc.authenticate(target.client_id, target.client_secret))
                connect.deadline = math.inf
                connected = True
                await _run(ctx, gc, stop, progress)
    except Exception as exc:
        if connected:
            raise
        first = next(leaves(exc))
        raise TargetError(
            f"cannot use the API at {target.api_url}: {error_kind(first)}: {first}"
        ) from None
    if connect.cancelled_caught:
        raise TargetError(
            f"no answer from the API at {target.api_url} within {settings.connect_timeout:g} s"
            " (is it running? is it the right port? for a deployment, set --api)"
        )
    return summarize(settings, stats)


async def _run(
    ctx: RunContext, gc: GlobalControllerClient, stop: trio.Event, progress: TextIO | None
) -> None:
    settings, stats = ctx.settings, ctx.stats
    phase = ["creating"]
    async with trio.open_nursery() as outer:
        if progress is not None:
            outer.start_soon(_progress, progress, stats, phase, settings.duration)
        plans = await _create_meetings(ctx, gc, stop)
        stats.participants_planned = len(plans) * settings.participants
        if stats.participants_planned == 0:
            ctx.all_settled.set()
            ctx.all_gone.set()
        phase[0] = "joining"
        async with trio.open_nursery() as participants:
            for plan in plans:
                for index in range(settings.participants):
                    participants.start_soon(SimulatedParticipant(ctx, plan, index).run)
            with trio.move_on_after(settings.setup_timeout) as setup:
                await _wait_any(ctx.all_settled, stop)
            if setup.cancelled_caught:
                stats.error(
                    "setup:TIMEOUT",
                    f"{stats.participants_planned - ctx.settled} participants not ready after "
                    f"{settings.setup_timeout:g} s; the run goes on without waiting for them",
                )
            if not stop.is_set():
                phase[0] = "running"
                stats.media_started_at = trio.current_time()
                stats.cpu_at_start = time.process_time()
                stats.media_started.set()
                ctx.go.set()
                with trio.move_on_after(settings.duration):
                    await _wait_any(stop, ctx.all_gone)
                stats.media_stopped_at = trio.current_time()
                stats.cpu_at_stop = time.process_time()
            ctx.go.set()
            ctx.stop_sending.set()
            if stats.media_started_at is not None:
                # Also after Ctrl-C: frames in flight are not drops (a second one cancels).
                phase[0] = "draining"
                with trio.move_on_after(DRAIN_S):
                    await _wait_any_async(stats.wait_caught_up, ctx.all_gone.wait)
            phase[0] = "leaving"
            ctx.leave.set()
        stats.stopped_early = stop.is_set()
        phase[0] = "ending"
        with trio.move_on_after(END_MEETINGS_GRACE_S, shield=True):
            for plan in plans:
                await _end_meeting(ctx, gc, plan)
        outer.cancel_scope.cancel()
    if progress is not None:
        _finish_progress(progress, progress_line(stats, "done", settings.duration))


async def _create_meetings(
    ctx: RunContext, gc: GlobalControllerClient, stop: trio.Event
) -> list[MeetingPlan]:
    settings, plans = ctx.settings, []
    for index in range(settings.meetings):
        if stop.is_set():
            break
        try:
            created = await ctx.rest(
                functools.partial(
                    gc.create_meeting,
                    f"loadtest {index + 1}/{settings.meetings}",
                    max_participants=settings.participants,
                )
            )
        except (DarkTowerError, trio.BrokenResourceError) as exc:
            ctx.stats.error(f"create:{error_kind(exc)}", exc)
            continue
        ctx.stats.meetings_created += 1
        plans.append(
            MeetingPlan(
                index=index,
                meeting_id=created.meeting_id,
                host_token=created.join_token,
                signal_url=created.meeting_controller_url,
                publishers=settings.publishers_per_meeting,
            )
        )
    return plans


async def _end_meeting(ctx: RunContext, gc: GlobalControllerClient, plan: MeetingPlan) -> None:
    try:
        await ctx.rest(lambda: gc.end_meeting(plan.meeting_id))
    except (DarkTowerError, trio.BrokenResourceError) as exc:
        ctx.stats.error(f"end:{error_kind(exc)}", exc)


async def _wait_any(*events: trio.Event) -> None:
    await _wait_any_async(*(event.wait for event in events))


async def _wait_any_async(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as one of the ``waits`` (async callables) returns."""
    async with trio.open_nursery() as nursery:

        async def one(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(one, wait)


async def _progress(out: TextIO, stats: Stats, phase: list[str], duration_s: float) -> None:
    """Print the progress line every PROGRESS_INTERVAL_S until cancelled: rewritten in place
    on a terminal, one line each time otherwise (a log, a pipe)."""
    tty = out.isatty()
    while True:
        await trio.sleep(PROGRESS_INTERVAL_S)
        line = progress_line(stats, phase[0], duration_s)
        out.write(f"\r\x1b[K{line}" if tty else f"{line}\n")
        out.flush()


def _finish_progress(out: TextIO, line: str) -> None:
    out.write(f"\r\x1b[K{line}\n" if out.isatty() else f"{line}\n")
    out.flush()
