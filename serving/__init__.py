"""Online side: the gRPC ranking service, inference backends, the CLI."""
