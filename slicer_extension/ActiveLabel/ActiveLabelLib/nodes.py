"""MRML nodes <-> files and arrays for the labeling loop.

The only module of this package that imports Slicer, and it needs Slicer's MRML library
alone (no Qt, no application): it runs inside Slicer and under the ``slicer-core`` wheel.
Every function takes the scene explicitly instead of using the application's
``slicer.mrmlScene``, so it runs the same in both.  Arrays are in Slicer's ``[k, j, i]`` order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk
from slicer.util import arrayFromVolume, updateVolumeFromArray

from .clicks import ClickSet
from .conversions import (
    VolumeGeometry,
    compose_label_map,
    reorient,
    segment_specs,
    split_label_map,
    to_slicer_order,
)
from .errors import ActiveLabelError
from .slices import SliceQueue, keep_slices

_TEMP = "__activelabel_temp__"

OVERLAY_COLORS = "vtkMRMLColorTableNodeFileColdToHotRainbow.txt"
"""Slicer's built-in colour table for the uncertainty overlay (blue: sure, red: unsure)."""

CLICK_ATTRIBUTE = "ActiveLabel.clicks"
"""Node attribute that marks a click node: ``<segment>|+`` (positive) or ``<segment>|-`` (negative)."""

CLICK_COLORS = {True: (0.20, 0.80, 0.20), False: (0.90, 0.20, 0.20)}
"""Positive clicks green, negative clicks red."""


def read_volume(scene: Any, path: str | Path, *, name: str, label: bool = False, display: bool = True) -> Any:
    """A scalar (or, with ``label``, label map) volume node read from a NIfTI/NRRD file."""
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(node):
        remove_nodes(scene, node)
        raise ActiveLabelError(f"Slicer could not read the volume file {Path(path).name}")
    if display:
        node.CreateDefaultDisplayNodes()
    return node


def read_overlay(scene: Any, path: str | Path, *, name: str) -> Any:
    """A float map (e.g. voxel uncertainty) as a scalar volume coloured for overlaying.

    The window spans the map's own range, so the most uncertain voxels are the reddest.
    """
    node = read_volume(scene, path, name=name)
    display = node.GetDisplayNode()
    display.SetAndObserveColorNodeID(OVERLAY_COLORS)
    low, high = node.GetImageData().GetScalarRange()
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(low, high if high > low else low + 1e-6)
    return node


def write_volume(scene: Any, node: Any, path: str | Path) -> Path:
    """Write a volume node to ``path`` (the format follows the extension, e.g. ``.nii.gz``)."""
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    try:
        storage.SetFileName(str(path))
        storage.SetUseCompression(True)
        if not storage.WriteData(node):
            raise ActiveLabelError(f"Slicer could not write the volume file {Path(path).name}")
    finally:
        scene.RemoveNode(storage)
    return Path(path)


def volume_geometry(node: Any) -> VolumeGeometry:
    """The voxel grid of a volume node."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    affine = np.array([[matrix.GetElement(row, col) for col in range(4)] for row in range(4)])
    return VolumeGeometry.from_affine(affine, node.GetImageData().GetDimensions())


def load_segmentation(
    scene: Any, label_path: str | Path, *, reference: Any, label_names: Mapping[str, int], name: str
) -> Any:
    """A segmentation node with one named, coloured segment per label, read from a label map file.

    Every label gets a segment, empty ones too, so the Segment Editor offers all of them.
    """
    masks = _read_masks(scene, label_path, reference=reference, label_names=label_names)
    segmentation = new_segmentation(scene, reference=reference, label_names=label_names, name=name)
    for segment_id, mask in masks.items():
        if mask.any():
            set_segment_mask(scene, segmentation, segment_id, mask, reference=reference)
    return segmentation


def replace_segments(
    scene: Any,
    segmentation: Any,
    label_path: str | Path,
    *,
    reference: Any,
    label_names: Mapping[str, int],
    names: Iterable[str],
) -> None:
    """Replace segments ``names`` with their voxels in a label map file (a refinement); others stay.

    Only the clicked segments are replaced, so edits of the other segments are kept.
    """
    masks = _read_masks(scene, label_path, reference=reference, label_names=label_names)
    for name in names:
        if name not in masks:
            raise ActiveLabelError(f"the refined label map has no label {name!r}; it has {', '.join(masks)}.")
        if segmentation.GetSegmentation().GetSegment(name) is None:
            spec = next(spec for spec in segment_specs(label_names) if spec.name == name)
            segmentation.GetSegmentation().AddEmptySegment(spec.name, spec.name, spec.color)
        set_segment_mask(scene, segmentation, name, masks[name], reference=reference)


def _read_masks(
    scene: Any, label_path: str | Path, *, reference: Any, label_names: Mapping[str, int]
) -> dict[str, np.ndarray]:
    """Every label's mask (Slicer order) from a label map file that must lie on the reference grid."""
    labels = read_volume(scene, label_path, name=_TEMP, label=True, display=False)
    try:
        mismatch = volume_geometry(reference).mismatch(volume_geometry(labels))
        if mismatch:
            raise ActiveLabelError(f"the segmentation does not fit the image: {mismatch}")
        return split_label_map(arrayFromVolume(labels), label_names)
    finally:
        remove_nodes(scene, labels)


def click_node(scene: Any, segment: str, *, positive: bool) -> Any:
    """The markups fiducial node holding one segment's positive (or negative) clicks; made on first use."""
    tag = f"{segment}|{'+' if positive else '-'}"
    for node in _click_nodes(scene):
        if node.GetAttribute(CLICK_ATTRIBUTE) == tag:
            return node
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"{segment} {'+' if positive else '-'} clicks")
    node.SetAttribute(CLICK_ATTRIBUTE, tag)
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:
        display.SetSelectedColor(*CLICK_COLORS[positive])
        display.SetColor(*CLICK_COLORS[positive])
    return node


def clicks_from_nodes(scene: Any) -> ClickSet:
    """Every click node's points (RAS mm) as a :class:`ClickSet`."""
    positive: dict[str, list[tuple[float, float, float]]] = {}
    negative: dict[str, list[tuple[float, float, float]]] = {}
    for node in _click_nodes(scene):
        segment, _, sign = node.GetAttribute(CLICK_ATTRIBUTE).rpartition("|")
        points = (positive if sign == "+" else negative).setdefault(segment, [])
        for index in range(node.GetNumberOfControlPoints()):
            position = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(index, position)
            points.append((position[0], position[1], position[2]))
    return ClickSet.of(positive=positive, negative=negative)


def show_clicks_of(scene: Any, segment: str | None) -> None:
    """Show the click nodes of ``segment`` only (none when ``None``)."""
    for node in _click_nodes(scene):
        display = node.GetDisplayNode()
        if display is not None:
            display.SetVisibility(node.GetAttribute(CLICK_ATTRIBUTE).rpartition("|")[0] == segment)


def remove_clicks(scene: Any) -> None:
    """Remove every click node (a new sample, or after the clicks were used)."""
    for node in _click_nodes(scene):
        remove_nodes(scene, node)


def _click_nodes(scene: Any) -> list[Any]:
    collection = scene.GetNodesByClass("vtkMRMLMarkupsFiducialNode")
    found = [collection.GetItemAsObject(index) for index in range(collection.GetNumberOfItems())]
    return [node for node in found if node.GetAttribute(CLICK_ATTRIBUTE)]


def new_segmentation(scene: Any, *, reference: Any, label_names: Mapping[str, int], name: str) -> Any:
    """A segmentation node on the reference grid with one empty, named, coloured segment per label.

    Segment ids are the label names, so a label is found by name whatever the segment order.
    """
    ensure_segmentation_converters()
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    for spec in segment_specs(label_names):
        segmentation.GetSegmentation().AddEmptySegment(spec.name, spec.name, spec.color)
    segmentation.CreateDefaultDisplayNodes()
    return segmentation


def set_segment_mask(scene: Any, segmentation: Any, segment_id: str, mask: np.ndarray, *, reference: Any) -> None:
    """Replace the voxels of one segment with a binary mask on the reference volume's grid."""
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", _TEMP)
    try:
        labels.CopyOrientation(reference)
        updateVolumeFromArray(labels, (np.asarray(mask) > 0).astype(np.uint8))
        segment_ids = vtk.vtkStringArray()
        segment_ids.InsertNextValue(segment_id)
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if not logic.ImportLabelmapToSegmentationNode(labels, segmentation, segment_ids):
            raise ActiveLabelError(f"Slicer could not update segment {segment_id!r}")
    finally:
        remove_nodes(scene, labels)


def segment_masks(scene: Any, segmentation: Any, *, reference: Any) -> dict[str, np.ndarray]:
    """Every segment's binary mask on the reference grid, by segment name (same names are merged)."""
    masks: dict[str, np.ndarray] = {}
    content = segmentation.GetSegmentation()
    for index in range(content.GetNumberOfSegments()):
        segment_id = content.GetNthSegmentID(index)
        labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", _TEMP)
        try:
            segment_ids = vtk.vtkStringArray()
            segment_ids.InsertNextValue(segment_id)
            logic = slicer.vtkSlicerSegmentationsModuleLogic
            if not logic.ExportSegmentsToLabelmapNode(segmentation, segment_ids, labels, reference):
                raise ActiveLabelError(f"Slicer could not export segment {content.GetSegment(segment_id).GetName()!r}")
            mask = arrayFromVolume(labels) > 0
        finally:
            remove_nodes(scene, labels)
        name = content.GetSegment(segment_id).GetName()
        masks[name] = masks[name] | mask if name in masks else mask
    return masks


def write_label_file(
    scene: Any,
    segmentation: Any,
    *,
    reference: Any,
    label_names: Mapping[str, int],
    path: str | Path,
    target: VolumeGeometry | None = None,
    slices: SliceQueue | None = None,
) -> Path:
    """Export the segmentation as one label map and write it.

    The label lies on ``target`` (the grid the image file declares, see
    :func:`~ActiveLabelLib.conversions.nifti_geometry`) when given, else on the reference
    volume's grid; the two differ when ITK reordered a left-handed NIfTI grid on reading.
    With ``slices`` (indices along a voxel axis of the image file) only those slices are
    annotated; every other voxel is written as
    :data:`~ActiveLabelLib.slices.NOT_ANNOTATED`.
    """
    source = volume_geometry(reference)
    label_map = compose_label_map(
        segment_masks(scene, segmentation, reference=reference), label_names, shape=tuple(reversed(source.shape))
    )
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", _TEMP)
    try:
        if target is None or source.mismatch(target) is None:
            labels.CopyOrientation(reference)
        else:
            label_map = to_slicer_order(reorient(label_map, source=source, target=target))
            labels.SetIJKToRASMatrix(_vtk_matrix(target.ijk_to_ras))
        if slices is not None:  # the array is in Slicer's (k, j, i) order: NIfTI axis a is 2 - a
            label_map = keep_slices(label_map, axis=2 - slices.axis, slices=slices.slices)
        updateVolumeFromArray(labels, np.ascontiguousarray(label_map))
        return write_volume(scene, labels, path)
    finally:
        remove_nodes(scene, labels)


def _vtk_matrix(matrix: np.ndarray) -> Any:
    result = vtk.vtkMatrix4x4()
    for row in range(4):
        for col in range(4):
            result.SetElement(row, col, float(matrix[row, col]))
    return result


def ensure_segmentation_converters() -> None:
    """Register the labelmap <-> closed surface conversion rules if nobody has.

    Slicer's Segmentations module registers them at start-up; MRML without the application
    (the ``slicer-core`` wheel) starts with none, and segments cannot even be created empty.
    """
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if factory.GetConverterRules():
        return
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


def remove_nodes(scene: Any, *nodes: Any) -> None:
    """Remove volume or segmentation nodes with their display, colour and storage nodes."""
    for node in nodes:
        if node is None or node.GetScene() is None:
            continue
        displays = [node.GetNthDisplayNode(index) for index in range(node.GetNumberOfDisplayNodes())]
        for display in filter(None, displays):
            color = display.GetColorNode() if hasattr(display, "GetColorNode") else None
            if color is not None and not color.GetSingletonTag():  # a table made for this node alone
                scene.RemoveNode(color)
            scene.RemoveNode(display)
        storage = node.GetStorageNode() if hasattr(node, "GetStorageNode") else None
        if storage is not None:
            scene.RemoveNode(storage)
        scene.RemoveNode(node)


def start_placing(scene: Any, node: Any) -> None:
    """Put the views in persistent place mode: each click in a view adds a point to ``node``.

    Uses the scene's selection and interaction singletons (the application's, inside Slicer).
    """
    selection = scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
    interaction = scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
    if selection is None or interaction is None:
        raise ActiveLabelError("this scene has no selection or interaction node; clicks are placed in Slicer's views")
    selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsFiducialNode")
    selection.SetActivePlaceNodeID(node.GetID())
    interaction.SetPlaceModePersistence(1)
    interaction.SetCurrentInteractionMode(interaction.Place)
