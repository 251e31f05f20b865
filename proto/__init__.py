"""Wire formats: the walbroker gRPC API and the telemetry batch, with generated code in `proto.gen`."""
