"""Wire formats: the walbroker gRPC API and the telemetry batch; generated code in `proto.gen`."""
