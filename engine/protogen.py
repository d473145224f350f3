"""Generate the Python gRPC code from proto/ into engine/_proto (run by the package build step,
and on first import from a source checkout when it is missing)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"
OUT_DIR = Path(__file__).resolve().parent / "_proto"


def generate(proto_dir: Path = PROTO_DIR, out_dir: Path = OUT_DIR) -> list[Path]:
    from grpc_tools import protoc  # build-time dependency (grpcio-tools)

    protos = sorted(proto_dir.rglob("*.proto"))
    if not protos:
        raise FileNotFoundError(f"no .proto files under {proto_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out_dir}",
            f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", *map(str, protos)]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + ", ".join(map(str, protos)))
    written = []
    for path in out_dir.rglob("*.py*"):
        if path.suffix in (".py", ".pyi"):
            text = path.read_text()
            # generated code imports siblings as top-level packages; make them package-relative
            fixed = re.sub(r"^from faceengine\.", "from engine._proto.faceengine.", text, flags=re.M)
            if fixed != text:
                path.write_text(fixed)
            written.append(path)
    for d in [out_dir, *[p for p in out_dir.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    return written


if __name__ == "__main__":
    for p in generate():
        print(p, file=sys.stderr)
