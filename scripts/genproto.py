"""Generate Python protobuf and gRPC code from proto/ into tcpscope/v1 (run by the setup step)."""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    protos = sorted(str(p.relative_to(root / "proto")) for p in (root / "proto").rglob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{root / 'proto'}",
        f"-I{include}",
        f"--python_out={root}",
        f"--pyi_out={root}",
        f"--grpc_python_out={root}",
        *protos,
    ]
    rc = int(protoc.main(args))
    if rc != 0:
        print(f"genproto: protoc failed ({rc})", file=sys.stderr)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
