"""The committed generated code is what scripts/gen_proto.py makes from proto/ now."""

from __future__ import annotations

import importlib.metadata
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "darktower" / "protocol" / "pb"
# The generated text depends on the generators' versions too: name them in the failure.
GENERATORS = ("grpcio-tools", "mypy-protobuf", "grpclib")
STALE = (
    "generated protobuf code is stale: run `nox -s proto` and commit darktower/protocol/pb "
    "(generators here: "
    + ", ".join(f"{name} {importlib.metadata.version(name)}" for name in GENERATORS)
    + ")"
)


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_is_fresh(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "pb"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), str(out)],
        check=True,
        capture_output=True,
    )
    fresh, committed = _files(out), _files(COMMITTED)
    assert sorted(fresh) == sorted(committed), STALE
    differing = [name for name in fresh if fresh[name] != committed[name]]
    assert differing == [], STALE


def test_generated_code_imports_without_warnings() -> None:
    # The runtime checks the generated code's version at import; a mismatch warns or raises.
    code = (
        "import warnings; warnings.simplefilter('error')\n"
        "import darktower.protocol.pb\n"
        "from darktower.protocol.pb.v1 import media_control_grpc, meeting_control_grpc, registry_grpc\n"
    )
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True, capture_output=True)


def test_stubs_cover_every_service() -> None:
    from darktower.protocol.pb.v1 import media_control_grpc, meeting_control_grpc, registry_grpc

    assert {"ControllerRegistryBase", "ControllerRegistryStub"} <= set(vars(registry_grpc))
    assert {"MeetingControlBase", "MeetingControlStub"} <= set(vars(meeting_control_grpc))
    assert {"MediaControlBase", "MediaControlStub"} <= set(vars(media_control_grpc))
    methods = set(media_control_grpc.MediaControlBase.__abstractmethods__)
    assert methods == {
        "RegisterParticipant",
        "RouteMedia",
        "RemoveParticipant",
        "RemoveStream",
        "Telemetry",
        "StartRecording",
        "StopRecording",
    }
    from darktower.protocol.pb.v1 import processing_grpc

    assert set(processing_grpc.MediaProcessingBase.__abstractmethods__) == {
        "StartJob",
        "UpdateJob",
        "StopJob",
        "RequestKeyFrame",
        "ListJobs",
    }


def test_protocol_and_messages_load_no_io_module() -> None:
    # The *_grpc stubs import grpclib (and asyncio); nothing else under darktower.protocol may.
    code = (
        "import sys, darktower.protocol\n"
        "from darktower.protocol.pb.v1 import common_pb2, signaling_pb2, registry_pb2\n"
        "from darktower.protocol.pb.v1 import meeting_control_pb2, media_control_pb2\n"
        "print(sorted(m for m in ('asyncio', 'grpclib', 'trio', 'socket') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
