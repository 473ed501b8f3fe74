"""Benchmarks behind `facestudio bench ...`: each returns a JSON-serialisable dict of measurements."""
