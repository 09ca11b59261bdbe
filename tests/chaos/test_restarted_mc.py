"""A known fault, kept as a deterministic scenario beside the randomized schedule (docs/
architecture.md §9): an MC killed and started again at once with its id, while its MH lives.

Its participants' resumes are refused (it lost its state), they rejoin through the GC, which
still places the meeting there; the MC re-creates it and puts its room on the same MH. That MH
still holds the room its previous instance made, with the participants' old registrations in
their media grace (docs/protocol.md §13) publishing the same stream ids, so every publication
restored by the rejoin is refused there ("published by another participant") and no media flows
again in the session. Expected to fail until an MH forgets what an MC that no longer knows it
had placed there.
"""

from __future__ import annotations

import pathlib
from contextlib import AsyncExitStack

import pytest
import trio

from darktower.client import open_gc_client
from tests.e2e._fault_cluster import Topology, fault_cluster
from tests.e2e._fault_peers import all_rejoined, everyone_sees_everyone, joined, media_back

from .test_chaos import CHAOS, MEDIA_BOUND_S, SETTLE_S

pytestmark = CHAOS


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="an MH keeps the room of an MC instance that is gone; the rejoined participants' "
    "streams collide with their old registrations there",
)
async def test_an_mc_restarted_at_once_gets_its_participants_media_back(
    tmp_path: pathlib.Path,
) -> None:
    async with (
        fault_cluster(tmp_path, Topology(mhs={"mc-a": 1, "mc-b": 1})) as cluster,
        AsyncExitStack() as clients,
    ):
        owner = await clients.enter_async_context(
            open_gc_client(cluster.gc_url, server_certificate_hashes=cluster.pins)
        )
        await owner.authenticate(cluster.client_id, cluster.client_secret)
        meeting_id = (await owner.create_meeting("restarted MC")).meeting_id
        peers = [
            await clients.enter_async_context(joined(gc, meeting_id, name, cluster.pins))
            for gc, name in ((owner, "ann"), (owner.as_caller(None), "bob"))
        ]
        await everyone_sees_everyone(peers, SETTLE_S)
        await media_back(peers, trio.current_time(), MEDIA_BOUND_S)
        killed_at = await cluster.kill("mc-a")
        await cluster.start("mc-a")
        await all_rejoined(peers, killed_at, SETTLE_S)
        await everyone_sees_everyone(peers, SETTLE_S)
        await media_back(peers, trio.current_time(), MEDIA_BOUND_S)
