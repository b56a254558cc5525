"""The Open Inference Protocol (KServe V2): codecs, a transport-neutral core, REST and gRPC."""
