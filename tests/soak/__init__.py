"""The chaos soak: ``python -m tests.soak`` (see run.py); a small version runs in the test suite."""
