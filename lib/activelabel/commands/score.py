"""``activelabel score``: score a project's stale volumes as a batch job, on Ray or local processes.

The studies and settings resolve as for ``activelabel serve`` (same ``--conf`` keys and
``ACTIVELABEL_*`` variables), so the command writes the scores a server of the same project
reads.  Each score is stored as soon as a worker returns it: a run that is stopped or
crashes resumes with the still-stale volumes when started again.
"""

from __future__ import annotations

import argparse
import logging
import sys

from activelabel.commands.serve import app_directory
from activelabel.config import Settings, load_settings, resolve_studies
from activelabel.datastore.factory import open_datastore
from activelabel.ml.checkpoints import ModelStore
from activelabel.ml.inference import load_model
from activelabel.scoring.backends import ScoringError, make_backend
from activelabel.scoring.distributed import BatchReport, score_distributed
from activelabel.scoring.scorer import ScoringOptions, embed_pool
from activelabel.store.label_versions import LabelVersionStore
from activelabel.store.presegmentations import PresegmentationStore
from activelabel.store.scores import ScoreStore


def _options(args: argparse.Namespace, settings: Settings) -> ScoringOptions:
    samples = settings.mc_samples if args.mc_samples is None else args.mc_samples
    if samples < 1:
        raise ScoringError(f"--mc-samples must be >= 1, got {samples}")
    return settings.scoring_options(samples=samples, force=args.force)


def summary(report: BatchReport, *, embedded: int) -> str:
    """The one-paragraph summary printed at the end of a run."""
    rate = f"{report.volumes_per_second:.3f}" if report.volumes_per_second else "-"
    return (
        f"scored {report.scored}, skipped {report.skipped} (fresh), failed {len(report.failed)}, "
        f"labeled embedded {embedded} in {report.seconds:.1f}s ({rate} volumes/s) with model version "
        f"{report.model_version} on {report.backend}: {report.workers} worker(s) x {report.threads} thread(s)"
    )


def run_score(args: argparse.Namespace) -> int:
    """Score the unlabeled volumes of ``--studies`` and embed the labeled ones; print a summary."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    studies = resolve_studies(args.studies)
    conf = dict(args.conf or [])
    settings = load_settings(conf, studies=studies, app_dir=str(app_directory(args.app)))
    options = _options(args, settings)
    model_store = ModelStore(settings.model_dir)
    datastore = open_datastore(
        studies,
        settings=settings,
        conf=conf,
        versions=LabelVersionStore(settings.label_versions_dir, index=settings.label_versions_path),
    )
    unlabeled = {image_id: datastore.get_image_uri(image_id) for image_id in datastore.get_unlabeled_images()}
    store = ScoreStore(settings.scores_path)
    report = score_distributed(
        unlabeled,
        model_store=model_store,
        preset=settings.preset,
        store=store,
        options=options,
        backend=make_backend(
            address=args.ray_address or settings.ray_address,
            workers=args.workers or settings.scoring_workers,
        ),
        device=settings.device,
        labels=settings.labels,
        presegmentations=PresegmentationStore(settings.presegmentations_dir),
    )
    network, info = load_model(model_store, device=settings.device)
    labeled = {image_id: datastore.get_image_uri(image_id) for image_id in datastore.get_labeled_images()}
    embedded = embed_pool(
        labeled,
        network=network,
        model_version=info.version,
        preset=settings.preset,
        store=store,
        overlap=settings.sw_overlap,
        bf16=settings.bf16,
    )
    print(summary(report, embedded=embedded), flush=True)
    if report.failed:
        print(
            f"error: {len(report.failed)} volume(s) could not be scored (see the log), e.g. {report.failed[0]}",
            file=sys.stderr,
        )
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``score`` to the ``activelabel`` command line."""
    parser = subparsers.add_parser(
        "score", help="score the stale volumes of a project as a batch job (Ray cluster or local processes)"
    )
    parser.add_argument("--studies", required=True, help="datastore folder, or a DICOMweb URL")
    parser.add_argument("--app", default=None, help="MONAI Label app folder (default: as for serve)")
    parser.add_argument(
        "--conf",
        nargs=2,
        action="append",
        metavar=("KEY", "VALUE"),
        help="app setting, repeatable (as for serve)",
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="HOST:PORT of a Ray cluster's head (default: the ray_address setting; none: local processes)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="tasks at once (default: the scoring_workers setting, else one per CPU core of the machine or cluster)",
    )
    parser.add_argument("--mc-samples", type=int, default=None, help="MC-dropout passes per volume (default: setting)")
    parser.add_argument("--force", action="store_true", help="rescore volumes whose score is already fresh")
    parser.set_defaults(func=run_score)
