"""``fetch_dev_access``: the development credential and certificate pin of the page server."""

from __future__ import annotations

import pathlib
import socket

import pytest

from darktower.client import DevAccess, DevStackError, fetch_dev_access, open_gc_client
from tests._stack import dev_stack


async def test_reads_the_stacks_credential_and_pin(tmp_path: pathlib.Path) -> None:
    async with dev_stack(tmp_path / "data") as stack:
        access = await fetch_dev_access(stack.page_url)
        assert access.certificate_sha256 == stack.certificate_sha256
        assert access.client_id == stack.client_id
        async with open_gc_client(
            stack.api_url, server_certificate_hashes=[access.certificate_sha256]
        ) as gc:
            await gc.authenticate(access.client_id, access.client_secret)
            assert (await gc.create_meeting("dev access")).meeting_id


async def test_nobody_listening_is_a_clear_error() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/"
    with pytest.raises(DevStackError, match="Is `python -m darktower` running there"):
        await fetch_dev_access(url, timeout_s=5)


async def test_what_is_given_is_not_fetched() -> None:
    with socket.socket() as s:  # nobody answers here: any fetch would fail
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/"
    access = await fetch_dev_access(
        url, client_id="id", client_secret="secret", certificate_sha256=b"\x01" * 32
    )
    assert access == DevAccess("id", "secret", b"\x01" * 32)
    with pytest.raises(DevStackError):  # the pin is missing: it is fetched, and fails
        await fetch_dev_access(url, client_id="id", client_secret="secret", timeout_s=5)
