"""Active-learning simulation: the oracle loop, stop rule, auto-label audit and cost model."""
