"""Import this before service.protocols.proto.gen: (re)generates the stubs when missing or stale.

    import service.protocols.proto.stubs  # noqa: F401
    from service.protocols.proto.gen import deepserve_pb2

NOTE: inference_pb2 and tritonclient.grpc both define the inference.* symbols in protobuf's default
descriptor pool, so one process cannot import both (a "duplicate symbol" TypeError). The server
never imports tritonclient; tests talk V2 through tritonclient and import only deepserve_pb2.
"""

from service.protocols.proto.build import build

build()
