"""Dark Tower: a video-conferencing server suite built on trio's structured concurrency.

Layers (imports flow one way, ``tests/test_layering.py`` checks it):

* ``darktower.errors`` / ``darktower.model`` - shared vocabulary, no I/O.
* ``darktower.frames`` - the 46-byte media frame header and an incremental decoder (sans-IO).
* ``darktower.protocol`` - signaling codec, generated protobuf, tokens, rate limits (sans-IO).
* ``darktower.transport`` - the only socket code: QUIC, HTTP/3, WebTransport, gRPC bridge.
* ``darktower.nurseries`` - the only code that defines the task tree.
* services: ``global_controller``, ``meeting_controller``, ``media_handler``; ``client``.
"""

__version__ = "0.1.0"
