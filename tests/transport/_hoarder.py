"""A client that tries to hold ``count`` idle QUIC connections to 127.0.0.1:``port`` from
127.0.0.2, run in its own process by test_admission_live.py so that its retransmissions take
their own CPU, not the server's under test (as a real client's would).

Usage: python _hoarder.py PORT COUNT
"""

from __future__ import annotations

import sys

import trio

from darktower.transport import Endpoint, TransportLimits
from darktower.transport._endpoint import make_udp_socket
from darktower.transport._tls import quic_configuration


async def hoard(port: int, count: int) -> None:
    limits = TransportLimits(handshake_timeout_s=600.0)
    hoarder = Endpoint(make_udp_socket("127.0.0.2", 0), limits)
    config = quic_configuration(limits, is_client=True, verify=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(hoarder.run)
        for i in range(count):
            hoarder.connect(("127.0.0.1", port), config)
            if i % 50 == 49:
                await trio.lowlevel.checkpoint()  # let the server read as the client sends
        await trio.sleep_forever()  # hold them until the test kills the process


if __name__ == "__main__":
    trio.run(hoard, int(sys.argv[1]), int(sys.argv[2]))
