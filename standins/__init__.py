"""Local stand-ins for the services the runtime calls, following contracts.md.

Real HTTP servers on loopback: the tests, the benchmarks and the embedded local stack all use
these. Each can be told to misbehave (``faults``) so failure paths are tested over the wire.
"""
