"""Where the real imaging data for tests and benchmarks lies: ``../shared/datasets`` beside the repository.

The data is read in place, never copied into the project.  ``ACTIVELABEL_SHARED_DATASETS``
points elsewhere (a checkout whose ``shared/`` is not its sibling).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
"""The repository root (this file is ``lib/activelabel/testing/datasets.py``)."""

SHARED_DATASETS = Path(os.environ.get("ACTIVELABEL_SHARED_DATASETS") or REPO.parent / "shared" / "datasets")
"""The folder of real data sets (see its README)."""

MSD_HIPPOCAMPUS = SHARED_DATASETS / "msd-hippocampus"
"""MSD Task04 hippocampus: ``imagesTr`` and ``labelsTr``, 200 T1 MRI volumes with labels."""

TOTALSEG_CT = SHARED_DATASETS / "totalseg-ct"
"""Small abdominal CT and MR volumes with model-derived organ labels."""
