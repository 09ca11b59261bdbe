"""The trio-asyncio loop the RPC bridge runs grpclib on (``darktower.transport.rpc``), with an
exception handler that keeps one connection's asyncio error in that connection
(docs/architecture.md §6.1).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio_asyncio


# --- the loop --------------------------------------------------------------------------
@asynccontextmanager
async def open_rpc_loop() -> AsyncIterator[asyncio.AbstractEventLoop]:
    """Enter the trio-asyncio loop of this task: the enclosing one if any, else a new one.

    Owns the loop only when it opened it; on exit that loop is closed and any asyncio work
    still running on it is cancelled.
    """
    loop = trio_asyncio.current_loop.get()
    if loop is not None and not loop.is_closed():
        yield loop
        return
    async with trio_asyncio.open_loop() as new_loop:
        new_loop.set_exception_handler(_connection_errors_stay_there)
        yield new_loop


def _connection_errors_stay_there(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler: an error asyncio reports for one connection (its context
    names the transport) closes that connection and is logged; anything else goes to
    trio-asyncio's handler, which raises it into the service (docs/architecture.md §6.1)."""
    transport = context.get("transport")
    if transport is None:
        loop.default_exception_handler(context)
        return
    asyncio.BaseEventLoop.default_exception_handler(loop, context)  # type: ignore[arg-type]
    transport.abort()
