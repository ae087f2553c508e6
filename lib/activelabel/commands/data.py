"""The ``activelabel data`` command: generate phantom datastores and fetch public data sets.

``register`` adds the command to the main parser; each sub-command's handler takes the
parsed namespace and returns an exit code: 0 with one summary line on stdout, or 2 with one
``error: ...`` line on stderr for a failure the user can fix (no traceback).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from activelabel.data.fetch import fetch_msd_hippocampus
from activelabel.data.phantoms import generate_datastore
from activelabel.data.starter_model import StarterSource, install_starter_model
from activelabel.data.to_dicom import datastore_to_dicom
from activelabel.ml.transforms import Modality

"""Exit code of a failure the user can fix (as argparse uses for bad arguments)."""

DATASETS = ("msd-hippocampus",)
"""Public data sets ``data fetch`` knows."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data generate`` and ``data fetch`` to the main parser's sub-commands."""
    data = subparsers.add_parser(
        "data",
        help="generate sample datastores or fetch public data sets",
        description="Generate deterministic phantom datastores or fetch public data sets as datastores.",
    )
    actions = data.add_subparsers(dest="data_command", required=True, metavar="{generate,fetch,to-dicom}")
    _add_generate(actions)
    _add_fetch(actions)
    _add_to_dicom(actions)


def _add_generate(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "generate",
        help="write CT-like or MR-like phantoms with ground truth as a datastore",
        description="Write deterministic phantoms (images, ground truth, labels.json) as a MONAI Label datastore.",
    )
    parser.add_argument("--dest", type=Path, required=True, help="datastore folder (created if missing)")
    parser.add_argument("--count", type=int, default=12, help="number of volumes (default: 12)")
    parser.add_argument(
        "--modality", choices=[m.value for m in Modality], default=Modality.CT.value, help="phantom kind (default: ct)"
    )
    parser.add_argument("--seed", type=int, default=0, help="series seed; same seed, same volumes (default: 0)")
    parser.add_argument("--labeled", type=int, default=0, help="volumes that start out labeled (default: 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing volumes of the same ids")
    parser.add_argument(
        "--no-model",
        action="store_true",
        help="leave the project's model untrained (default: install the starting model shipped for the phantoms)",
    )
    parser.set_defaults(func=run_generate)


def _add_fetch(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "fetch",
        help="download a public data set (checksummed) and lay it out as a datastore",
        description="Download a public data set, or copy it from a local mirror, into a MONAI Label datastore.",
    )
    parser.add_argument("dataset", choices=DATASETS, help="data set to fetch")
    parser.add_argument("--dest", type=Path, required=True, help="datastore folder (created if missing)")
    parser.add_argument(
        "--mirror", type=Path, default=None, help="local folder (imagesTr/, labelsTr/) or .tar to use instead"
    )
    parser.add_argument("--labeled", type=int, default=0, help="volumes that start out labeled (default: 0)")
    parser.add_argument("--downloads", type=Path, default=None, help="download folder (default: DEST/.downloads)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing volumes of the same ids")
    parser.set_defaults(func=run_fetch)


def _add_to_dicom(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "to-dicom",
        help="write a datastore's NIfTI volumes as DICOM series (for a PACS)",
        description="Write each NIfTI volume of a datastore as one DICOM study with one CT or MR series.",
    )
    parser.add_argument("--src", type=Path, required=True, help="datastore folder with NIfTI volumes")
    parser.add_argument("--dest", type=Path, required=True, help="output folder: one sub-folder per series")
    parser.add_argument(
        "--modality", choices=[m.value for m in Modality], default=Modality.CT.value, help="modality (default: ct)"
    )
    parser.add_argument("--count", type=int, default=None, help="convert only the first N volumes (default: all)")
    parser.set_defaults(func=run_to_dicom)


def run_to_dicom(args: argparse.Namespace) -> int:
    """Handle ``data to-dicom``."""
    series = datastore_to_dicom(args.src, args.dest, modality=Modality(args.modality), count=args.count)
    instances = sum(s.instances for s in series)
    print(f"wrote {len(series)} {args.modality} series ({instances} instances) in {args.dest}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    """Handle ``data generate``."""
    summary = generate_datastore(
        args.dest,
        modality=args.modality,
        count=args.count,
        seed=args.seed,
        labeled=args.labeled,
        overwrite=args.overwrite,
    )
    line = f"generated {summary.images} {args.modality} volumes ({summary.labeled} labeled) in {summary.dest}"
    if not args.no_model:
        line += "; " + _starter(args.dest, modality=args.modality)
    print(line)
    return 0


def _starter(dest: Path, *, modality: str) -> str:
    """Install the shipped starting model; the summary's second half."""
    outcome = install_starter_model(dest, modality=modality)
    if outcome.source is StarterSource.NONE:
        return "starting model: none ships for these settings (version 0, untrained)"
    dice = outcome.info.val_mean_dice
    quality = f", held-out phantom mean Dice {dice:.2f}" if dice is not None else ""
    return f"starting model: {outcome.source.value} (version {outcome.info.version}{quality})"


def run_fetch(args: argparse.Namespace) -> int:
    """Handle ``data fetch``."""
    summary = fetch_msd_hippocampus(
        args.dest, mirror=args.mirror, labeled=args.labeled, downloads=args.downloads, overwrite=args.overwrite
    )
    print(f"fetched {summary.images} {args.dataset} volumes ({summary.labeled} labeled) in {summary.dest}")
    return 0
