"""Where work runs: MONAI Label tasks forked from a pre-imported worker, interactive passes in a bounded pool.

Kept free of imports: the task client must import fast."""
