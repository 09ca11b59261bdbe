"""The in-process ``python -m darktower`` stack (GC, MC, MH on ports 0, real QUIC on
127.0.0.1) and a meeting on it, for the client session tests (pattern of tests/e2e)."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import TypeVar

import attrs
import httpx
import trio

from darktower.__main__ import Running
from darktower.client import (
    CreatedMeeting,
    GlobalControllerClient,
    MeetingSession,
    join_meeting_session,
    open_gc_client,
)
from tests._stack import dev_stack

WAIT_S = 20  # a generous bound on each wait: these run on real time over real QUIC

E = TypeVar("E")


async def dev_credentials(stack: Running) -> dict[str, str]:
    """The development credential, as the examples get it (from the page server)."""
    async with httpx.AsyncClient(base_url=stack.page_url) as page:
        data: dict[str, str] = (await page.get("/api/v1/dev/credentials")).json()
    return data


@attrs.define
class Meeting:
    stack: Running
    gc: GlobalControllerClient
    created: CreatedMeeting
    exits: AsyncExitStack

    @property
    def pins(self) -> list[bytes]:
        return [self.stack.certificate_sha256]

    async def guest_token(self, name: str) -> str:
        owner, self.gc.access_token = self.gc.access_token, None  # a guest has no account
        try:
            return (await self.gc.join_meeting(self.created.meeting_id, name)).join_token
        finally:
            self.gc.access_token = owner

    def session(self, token: str, name: str) -> AbstractAsyncContextManager[MeetingSession]:
        return join_meeting_session(
            self.stack.signal_url,
            meeting_id=self.created.meeting_id,
            join_token=token,
            participant_name=name,
            server_certificate_hashes=self.pins,
            origin=self.gc.origin,
        )

    async def join(self, name: str, *, host: bool = False) -> MeetingSession:
        """A session that lives until the test's meeting block ends."""
        token = self.created.join_token if host else await self.guest_token(name)
        return await self.exits.enter_async_context(self.session(token, name))


@asynccontextmanager
async def meeting(tmp_path: pathlib.Path) -> AsyncIterator[Meeting]:
    async with dev_stack(tmp_path / "data") as stack, AsyncExitStack() as exits:
        gc = await exits.enter_async_context(
            open_gc_client(stack.api_url, server_certificate_hashes=[stack.certificate_sha256])
        )
        creds = await dev_credentials(stack)
        await gc.authenticate(creds["client_id"], creds["client_secret"])
        created = await gc.create_meeting("client tests")
        yield Meeting(stack, gc, created, exits)


async def next_event(
    session: MeetingSession, kind: type[E], where: Callable[[E], bool] = lambda e: True
) -> E:
    """The next event of ``kind`` that satisfies ``where`` (others are skipped)."""
    with trio.fail_after(WAIT_S):
        async for event in session.events:
            if isinstance(event, kind) and where(event):
                return event
    raise AssertionError(f"the session ended before a {kind.__name__}")
