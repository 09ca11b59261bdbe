"""The GC's TCP listener ends because of no peer: an error in one connection beside a
cancellation (the drain deadline) stays in that connection, and an error ``accept()``
reports for a connection not yet accepted (Linux reports the peer's errors there) is counted
and accepting goes on, as ``trio.SocketListener`` does."""

from __future__ import annotations

import errno
from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.trio.worker_context import WorkerContext

from darktower.transport import _http_tcp
from darktower.transport._http_tcp import _TcpServer
from darktower.transport.http_server import HttpLimits


def _server(counters: Counter[str]) -> _TcpServer:
    return _TcpServer(None, Config(), WorkerContext(None), limits=HttpLimits(), counters=counters)


class _FailsWhenCancelled:
    """Stands in for hypercorn's ``TCPServer``: a task group whose app task raises while the
    connection is being cancelled (as a send on a closed stream would)."""

    def __init__(self, *args: Any) -> None:
        pass

    def __await__(self) -> Any:
        return self._run().__await__()

    async def _run(self) -> None:
        async def app_task() -> None:
            try:
                await trio.sleep_forever()
            finally:
                raise RuntimeError("send on a closed stream")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(app_task)
            await trio.sleep_forever()


async def test_an_error_beside_a_cancellation_stays_in_its_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_http_tcp, "_TcpConnection", _FailsWhenCancelled)
    counters: Counter[str] = Counter()
    server = _server(counters)
    a, b = trio.socket.socketpair()
    assert server.per_address.try_acquire("k")
    server.connections = 1
    with b:
        async with trio.open_nursery() as connections:
            connections.start_soon(server._serve_connection, trio.SocketStream(a), None, "k")
            await trio.testing.wait_all_tasks_blocked()
            connections.cancel_scope.cancel()  # the drain deadline
    assert counters == {"tcp_error:RuntimeError": 1}
    assert server.connections == 0


class _Listener:
    """A listening socket whose ``accept()`` first raises ``errors``, then blocks forever."""

    def __init__(self, errors: list[OSError]) -> None:
        self.errors = errors
        self.blocked = trio.Event()

    async def accept(self) -> Any:
        if self.errors:
            await trio.lowlevel.checkpoint()
            raise self.errors.pop(0)
        self.blocked.set()
        await trio.sleep_forever()

    def __enter__(self) -> _Listener:
        return self

    def __exit__(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    "code",
    [errno.ECONNABORTED, errno.EPROTO, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT],
)
async def test_an_accept_error_of_one_peer_is_counted_and_accepting_goes_on(code: int) -> None:
    counters: Counter[str] = Counter()
    listener = _Listener([OSError(code, "peer error"), OSError(code, "peer error")])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_server(counters).serve, listener, None, nursery)
        with trio.fail_after(5):
            await listener.blocked.wait()  # accepting again after both errors
        nursery.cancel_scope.cancel()
    assert counters == {f"tcp_accept_error:{errno.errorcode[code]}": 2}


async def test_an_unexpected_accept_error_still_ends_the_listener() -> None:
    listener = _Listener([OSError(errno.EBADF, "bad descriptor")])
    with pytest.raises(OSError):
        await _server(Counter()).serve(listener, None, None)  # type: ignore[arg-type]
