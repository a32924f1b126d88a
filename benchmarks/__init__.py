"""Benchmarks of mqttpush against mosquitto: ``python -m benchmarks.run`` (see README.md)."""
