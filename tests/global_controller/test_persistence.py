"""What survives a GC restart: meetings, signing keys (tokens stay valid), the dev certificate."""

from __future__ import annotations

import datetime
import pathlib
import stat

import pytest

from darktower.global_controller import keys
from darktower.global_controller.clients import add_client
from tests.global_controller._harness import (
    ManualClock,
    StandInMC,
    gc_settings,
    open_api,
    register_mc,
    running_gc,
    running_stand_in_mc,
)


async def test_meetings_keys_and_certificate_survive_a_restart(tmp_path: pathlib.Path) -> None:
    settings = gc_settings(tmp_path / "data")
    client_id, secret = await add_client(settings, "alice")
    clock = ManualClock()
    mc = StandInMC()
    async with running_stand_in_mc(mc) as endpoint:
        async with running_gc(settings, clock) as (first, _):
            reg_before = await register_mc(first.grpc_port, "mc-1", endpoint)
            async with open_api("h1", first.url, first.certificate_sha256) as api:
                token = await api.token(client_id, secret)
                created = await api.request(
                    "POST", "/api/v1/meetings", token=token, json_body={"display_name": "kept"}
                )
                assert created.status == 201
        meeting_id = created.json()["meeting_id"]

        async with running_gc(settings, clock) as (second, _):
            assert second.certificate_sha256 == first.certificate_sha256
            reg_after = await register_mc(second.grpc_port, "mc-1", endpoint)
            assert reg_after.join_token_public_key_pem == reg_before.join_token_public_key_pem
            async with open_api("h3", second.url, second.certificate_sha256) as api:
                # the access token minted before the restart still works
                listed = await api.request("GET", "/api/v1/meetings", token=token)
                assert listed.status == 200 and listed.json()["total"] == 1
                info = await api.request("GET", f"/api/v1/meetings/{meeting_id}")
                assert info.json()["display_name"] == "kept"
                end = await api.request("DELETE", f"/api/v1/meetings/{meeting_id}", token=token)
                assert end.status == 204
    assert mc.ended == [meeting_id]

    data = tmp_path / "data"
    for name in (keys.JOIN_KEY_FILE, keys.ACCESS_KEY_FILE, keys.DEV_KEY_FILE):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name


def test_dev_certificate_is_reused_until_a_day_before_expiry(tmp_path: pathlib.Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    first = keys.load_or_create_tls("", "", tmp_path, now=now)
    assert first.generated
    again = keys.load_or_create_tls("", "", tmp_path, now=now + datetime.timedelta(days=11))
    assert again.credentials.sha256 == first.credentials.sha256
    renewed = keys.load_or_create_tls("", "", tmp_path, now=now + datetime.timedelta(days=12))
    assert renewed.credentials.sha256 != first.credentials.sha256
    # configured files are used as they are
    given = keys.load_or_create_tls(renewed.certfile, renewed.keyfile, tmp_path / "other")
    assert not given.generated and given.credentials.sha256 == renewed.credentials.sha256


def test_signing_key_is_created_once(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "k" / "join-key.pem"
    key = keys.load_or_create_signing_key(path)
    same = keys.load_or_create_signing_key(path)
    assert key.private_bytes_raw() == same.private_bytes_raw()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_configured_key_files_must_exist(tmp_path: pathlib.Path) -> None:
    from darktower.global_controller.server import load_signing_keys

    settings = gc_settings(tmp_path / "data", join_key_file=str(tmp_path / "missing.pem"))
    with pytest.raises(FileNotFoundError):
        load_signing_keys(settings)
    assert not (tmp_path / "missing.pem").exists()
