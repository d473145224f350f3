"""Application services: the engine's use cases (enrolment, watchlists, cameras, events), written once and
called by the gRPC servicers, the console (through gRPC) and the offline CLI alike, so a rule lives in one
place. They know the gallery, the stores and the engine by interface, and nothing of protobuf or argparse."""
