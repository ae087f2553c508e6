"""ActiveLabel: active-learning labeling of 3D medical images on MONAI Label."""

from __future__ import annotations

__version__ = "0.1.0"
