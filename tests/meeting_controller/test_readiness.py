"""The MC's /readyz says whether a join could succeed: not while no Media Handler is usable
(docs/architecture.md §4.6), then ready once one has registered."""

from __future__ import annotations

import pathlib

import httpx
import trio

from darktower import media_handler
from tests._stack import mh_settings, open_services, running_service

WAIT_S = 20.0


async def test_not_ready_without_a_usable_media_handler(tmp_path: pathlib.Path) -> None:
    async with open_services(tmp_path, mc={"media_handler": ""}) as services:
        assert services.mc is not None
        mc = services.mc
        async with httpx.AsyncClient(base_url=mc.ops_url) as http:
            assert (await http.get("/readyz")).status_code == 503
            settings = mh_settings(mc_grpc="{}:{}".format(*mc.grpc_address))
            async with running_service(media_handler.serve, settings) as (mh, _):
                with trio.fail_after(WAIT_S):
                    await mc.controller.mhs.wait_for(mh.handler_id)
                assert (await http.get("/readyz")).status_code == 200
