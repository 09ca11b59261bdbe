"""Generated protobuf modules of the contract (``proto/darktower/v1``); do not edit.

Regenerate with ``nox -s proto``. The message modules are re-exported here; the grpclib
service stubs (``darktower.protocol.pb.v1.*_grpc``) are not, because they import grpclib and
asyncio, which the sans-IO protocol layer must not load.
"""

from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import media_control_pb2
from darktower.protocol.pb.v1 import meeting_control_pb2
from darktower.protocol.pb.v1 import processing_pb2
from darktower.protocol.pb.v1 import registry_pb2
from darktower.protocol.pb.v1 import signaling_pb2

__all__ = [
    "common_pb2",
    "media_control_pb2",
    "meeting_control_pb2",
    "processing_pb2",
    "registry_pb2",
    "signaling_pb2",
]
