"""local_runner.py's parts: the NATS-to-HTTP bridge and the embedded local stack."""
