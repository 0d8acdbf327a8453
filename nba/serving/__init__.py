"""The decision service and what it wires: the bundle, the engine (features, models, core,
stores), batch decisions, and running the BentoML server."""
