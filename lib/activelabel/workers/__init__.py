"""Task process machinery: MONAI Label tasks forked from a pre-imported worker.

Kept free of imports: the task client must import fast."""
