"""Uncertainty scoring of a pool: the scorer, its per-image worker, and distributed backends (Ray, processes)."""
