"""Plain-Python core of the ActiveLabel Slicer module: server client, labeling session, conversions.

Every module here except :mod:`.nodes` imports neither Slicer nor Qt, so the loop runs and is
tested outside Slicer; :mod:`.nodes` needs Slicer's MRML library only (no Qt).
"""

# ruff: noqa: N999 -- Slicer names a scripted module's helper package <Module>Lib (like DICOMLib)
