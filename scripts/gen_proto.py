"""Generate darktower/protocol/pb from proto/darktower/v1/*.proto (run by ``nox -s proto``).

Usage: ``python scripts/gen_proto.py [OUT_DIR]`` (default: ``darktower/protocol/pb``).

protoc names generated modules after the proto package, ``darktower.v1``, which would resolve
into our own top-level ``darktower`` package; so the files are generated into a scratch
directory and moved to ``OUT_DIR/v1`` with their cross-imports rewritten to
``darktower.protocol.pb.v1``. The rewritten module path does not depend on ``OUT_DIR``, so
``tests/protocol/test_generated_is_fresh.py`` can generate into a temporary directory and
compare byte for byte with the committed files.

Three plugins run: protobuf's Python generator (``*_pb2.py``), mypy-protobuf (``*_pb2.pyi``)
and grpclib's (``*_grpc.py``, service stubs that import grpclib and therefore asyncio: they are
never imported by ``darktower.protocol`` itself, only by the transport layer).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_PACKAGE_DIR = pathlib.Path("darktower") / "v1"
DEFAULT_OUT = ROOT / "darktower" / "protocol" / "pb"
PYTHON_PACKAGE = "darktower.protocol.pb.v1"

# Generated module suffixes this script owns inside OUT_DIR/v1; anything else is left alone.
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_grpc.py")

PB_INIT = '''"""Generated protobuf modules of the contract (``proto/darktower/v1``); do not edit.

Regenerate with ``nox -s proto``. The message modules are re-exported here; the grpclib
service stubs (``darktower.protocol.pb.v1.*_grpc``) are not, because they import grpclib and
asyncio, which the sans-IO protocol layer must not load.
"""

{imports}

__all__ = [
{names}]
'''

V1_INIT = '''"""Generated from ``proto/darktower/v1`` by ``scripts/gen_proto.py``; do not edit."""
'''

_FROM_IMPORT = re.compile(r"\bfrom darktower\.v1 import\b")
_QUALIFIED = re.compile(r"\bdarktower\.v1\.(\w+_pb2)\b")


def _plugin(name: str) -> str:
    """The plugin executable beside this interpreter (a venv's bin/), else on PATH."""
    found = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install the project's dev extras")
    return found


def _rewrite(text: str) -> str:
    # Only import statements and module-qualified names move; RPC paths such as
    # '/darktower.v1.MediaControl/RouteMedia' and the serialized descriptors must not.
    text = _FROM_IMPORT.sub(f"from {PYTHON_PACKAGE} import", text)
    return _QUALIFIED.sub(rf"{PYTHON_PACKAGE}.\1", text)


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Generate every module into ``out_dir``; return the files written."""
    protos = sorted(
        p.relative_to(PROTO_ROOT) for p in (PROTO_ROOT / PROTO_PACKAGE_DIR).glob("*.proto")
    )
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_ROOT / PROTO_PACKAGE_DIR}")
    written: list[pathlib.Path] = []
    with tempfile.TemporaryDirectory() as scratch:
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={PROTO_ROOT}",
            f"--plugin=protoc-gen-grpclib_python={_plugin('protoc-gen-grpclib_python')}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--python_out={scratch}",
            f"--mypy_out={scratch}",
            f"--grpclib_python_out={scratch}",
            *(str(p) for p in protos),
        ]
        subprocess.run(command, check=True, cwd=PROTO_ROOT)
        v1 = out_dir / "v1"
        v1.mkdir(parents=True, exist_ok=True)
        for stale in v1.iterdir():
            if stale.name.endswith(GENERATED_SUFFIXES):
                stale.unlink()
        generated = sorted((pathlib.Path(scratch) / PROTO_PACKAGE_DIR).iterdir())
        for source in generated:
            if not source.name.endswith(GENERATED_SUFFIXES):
                continue
            if source.name.endswith("_grpc.py") and "class " not in source.read_text():
                continue  # grpclib writes an empty stub module for a file without services
            target = v1 / source.name
            target.write_text(_rewrite(source.read_text()))
            written.append(target)
    modules = sorted(p.stem for p in written if p.name.endswith("_pb2.py"))
    (v1 / "__init__.py").write_text(V1_INIT)
    (out_dir / "__init__.py").write_text(
        PB_INIT.format(
            imports="\n".join(f"from {PYTHON_PACKAGE} import {m}" for m in modules),
            names="".join(f'    "{m}",\n' for m in modules),
        )
    )
    written += [v1 / "__init__.py", out_dir / "__init__.py"]
    return sorted(written)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", type=pathlib.Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    for path in generate(args.out_dir):
        print(path)


if __name__ == "__main__":
    main()
