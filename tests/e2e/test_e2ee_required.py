"""``require_e2ee`` on the real MC and MH over real QUIC (docs/protocol.md §16): a client that
requires end-to-end encryption does not join a meeting without it (EncryptionRequired, before
any media is sent), and joins an encrypted one as usual."""

from __future__ import annotations

import pathlib
from contextlib import AbstractAsyncContextManager

import pytest

from darktower.client import EncryptionRequired, MeetingSession, join_meeting_session
from darktower.model import Role
from tests._stack import open_services

PLAIN, SECRET = "plain", "secret"


async def test_require_e2ee_refuses_a_plain_meeting_and_joins_an_encrypted_one(
    tmp_path: pathlib.Path,
) -> None:
    async with open_services(tmp_path, mc={}, mh={}) as services:
        await services.assign(PLAIN)
        await services.assign(SECRET, enable_e2e_encryption=True)

        def join(meeting: str, name: str) -> AbstractAsyncContextManager[MeetingSession]:
            return join_meeting_session(
                services.signal_url,
                meeting_id=meeting,
                join_token=services.token(meeting, Role.HOST, participant_name=name),
                participant_name=name,
                server_certificate_hashes=services.pins,
                require_e2ee=True,
            )

        with pytest.raises(EncryptionRequired, match="encryption_keys"):
            async with join(PLAIN, "ann"):
                raise AssertionError("joined a meeting without end-to-end encryption")
        async with join(SECRET, "ann") as ann:
            assert ann.e2ee.enabled and ann.e2ee.fingerprint
