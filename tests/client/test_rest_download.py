"""download_recording against answers a GC should not give (a unit test on a stand-in HTTP/3
client): an empty partial answer, or a range other than the one asked for, stops the download
with an error instead of asking again forever."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio

from darktower.client import GlobalControllerClient
from darktower.errors import DarkTowerError
from darktower.transport import Response


class _Http:
    def __init__(self, answers: list[Response]) -> None:
        self.answers = answers
        self.asked: list[str] = []
        self.authority = "127.0.0.1:1"

    async def request(
        self, method: str, path: str, headers: Sequence[tuple[str, str]] = (), body: bytes = b""
    ) -> Response:
        await trio.lowlevel.checkpoint()
        self.asked.append(dict(headers)["range"])
        return self.answers.pop(0)


@pytest.mark.parametrize(
    "answer",
    [
        Response(206, (("content-range", "bytes 0-99/1000"),), b""),  # nothing read
        Response(206, (("content-range", "bytes 500-599/1000"),), b"x" * 100),  # another range
    ],
)
async def test_a_download_stops_on_an_answer_that_would_repeat(answer: Response) -> None:
    http = _Http([answer, answer])
    gc = GlobalControllerClient(http, access_token="t")  # type: ignore[arg-type]
    with pytest.raises(DarkTowerError):
        await gc.download_recording("m", "r", lambda _data: None)
    assert http.asked == ["bytes=0-4194303"]
