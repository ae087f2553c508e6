"""Helpers for tests and benchmarks only: a server subprocess, a local Ray cluster, the load test."""
