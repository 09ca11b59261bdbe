"""End-to-end encryption across a resume, over real QUIC through the netfault proxy against the
real MC and MH (docs/protocol.md §13, §16.3): the resumed session keeps its key pair, and the
keys it missed while it was away (a rotation after a leave) are shared with it again once it is
back, so media decrypts both ways again."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from darktower.client import (
    ConnectionState,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    Reconnecting,
    Resumed,
    join_meeting_session,
)
from darktower.model import Role
from tests._stack import Services, open_services
from tests.client.test_reconnect import (
    GRACE_S,
    IDLE_S,
    MEETING,
    behind_proxies,
    expect,
    flows,
    host,
    reconnecting,
    talking,
)


@asynccontextmanager
async def encrypted_stack(tmp_path: pathlib.Path) -> AsyncIterator[Services]:
    async with open_services(
        tmp_path,
        mc={"resume_grace_s": GRACE_S, "idle_timeout_s": IDLE_S},
        mh={"media_grace_s": GRACE_S},
    ) as services:
        await services.assign(MEETING, enable_e2e_encryption=True)
        yield services


async def test_keys_missed_during_an_outage_are_shared_again_once_it_is_over(
    tmp_path: pathlib.Path,
) -> None:
    async with encrypted_stack(tmp_path) as services, host(services) as h:
        async with behind_proxies(services, "bob") as bob:
            b = bob.session
            await expect(h, ParticipantJoined)
            to_bob = await talking(h, b)
            from_bob = await talking(b, h)
            await flows(*to_bob)
            await flows(*from_bob)
            pid, fingerprint, generation = b.participant_id, b.e2ee.fingerprint, h.e2ee.generation
            async with join_meeting_session(
                services.signal_url,
                meeting_id=MEETING,
                join_token=services.token(MEETING, Role.GUEST),
                participant_name="carol",
                server_certificate_hashes=services.pins,
            ) as carol:
                await expect(b, ParticipantJoined)
                bob.blackout()
                await expect(b, Reconnecting)
                await expect(h, ParticipantUpdated, reconnecting(pid))  # the MC noticed
            # carol left while bob was away: the host rotated, and its share to bob was lost.
            await expect(
                h, ParticipantLeft, lambda e: e.participant.participant_id == carol.participant_id
            )
            assert h.e2ee.generation == generation + 2  # a ratchet for carol, a rotation
            bob.back()
            await expect(b, Resumed)
            await expect(
                h,
                ParticipantUpdated,
                lambda e: e.participant.connection is ConnectionState.CONNECTED,
            )
            assert b.e2ee.fingerprint == fingerprint == h.participants[pid].fingerprint
            await flows(*to_bob)  # decrypts: the host shared its key again
            await flows(*from_bob)
            for session in (h, b):
                assert session.e2ee.drops["auth_failed"] == session.e2ee.drops["bad_share"] == 0
