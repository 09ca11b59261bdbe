"""An idle session keeps no message of its join alive on the MC (issue #6, memory per session).

The clients run in this process too and each keeps its own JoinResponse (and JoinRequest), so
the server's share is what is alive beyond one per client.
"""

from __future__ import annotations

import gc
import pathlib
from contextlib import AsyncExitStack

import trio.testing

from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._harness import next_event, open_stack

CLIENTS = 3


def _alive(message_type: type) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is message_type)


async def test_idle_sessions_keep_no_join_messages(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path) as stack, AsyncExitStack() as clients:
        await stack.assign("m1", max_participants=10)
        before_responses = _alive(sig.JoinResponse)
        before_requests = _alive(sig.ClientMessage)
        joined = [await clients.enter_async_context(stack.join("m1")) for _ in range(CLIENTS)]
        # The last joiner's arrival was written to the others: every writer is idle again.
        for client in joined[:-1]:
            await next_event(client, "participant_joined")
        await trio.testing.wait_all_tasks_blocked()
        assert _alive(sig.JoinResponse) - before_responses == CLIENTS  # the clients' own
        # The server's first message (join token and all): gone once the session is admitted.
        assert _alive(sig.ClientMessage) - before_requests == 0
