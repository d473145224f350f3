"""Access to the generated gRPC modules (generated from proto/ by the build step; regenerated
on first import in a source checkout where they are missing or older than a proto file added since)."""

from __future__ import annotations

try:
    from engine._proto.faceengine.v1 import faceengine_pb2 as pb
    from engine._proto.faceengine.v1 import faceengine_pb2_grpc as rpc
    from engine._proto.faceengine.v1 import sightings_pb2 as spb
    from engine._proto.faceengine.v1 import sightings_pb2_grpc as srpc
except ImportError:  # pragma: no cover - source checkout without a build
    from engine.protogen import generate

    generate()
    from engine._proto.faceengine.v1 import faceengine_pb2 as pb
    from engine._proto.faceengine.v1 import faceengine_pb2_grpc as rpc
    from engine._proto.faceengine.v1 import sightings_pb2 as spb
    from engine._proto.faceengine.v1 import sightings_pb2_grpc as srpc

__all__ = ["pb", "rpc", "spb", "srpc"]
