"""``activelabel simulate``: run the oracle active-learning loop and write its results JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from activelabel.config import load_settings
from activelabel.errors import UsageError
from activelabel.fsutil import atomic_write_json
from activelabel.labelmap import LABELS_FILE
from activelabel.simulation.loop import STRATEGIES, SimulationConfig, load_cached, preprocess, simulate
from activelabel.simulation.sparse import simulate_slices

_SUFFIXES = (".nii.gz", ".nii")


def _cases(folder: Path) -> dict[str, Path]:
    cases = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.name.startswith("._") or not path.name.endswith(_SUFFIXES):
            continue
        cases[path.name.removesuffix(".gz").removesuffix(".nii")] = path
    return cases


def pair_cases(images: Path, labels: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Images and truths matched by file name; every image needs its truth."""
    for folder in (images, labels):
        if not folder.is_dir():
            raise UsageError(f"folder not found: {folder}")
    image_cases, truth_cases = _cases(images), _cases(labels)
    if not image_cases:
        raise UsageError(f"no NIfTI images in {images}")
    missing = sorted(set(image_cases) - set(truth_cases))
    if missing:
        raise UsageError(f"{len(missing)} image(s) without a label in {labels}, e.g. {missing[0]}")
    return image_cases, {c: truth_cases[c] for c in image_cases}


def _label_source(args: argparse.Namespace) -> str:
    if args.label_map:
        return args.label_map
    for folder in (args.images, args.labels, args.images.parent):
        if (folder / LABELS_FILE).is_file():
            return str(folder / LABELS_FILE)
    raise UsageError(f"no {LABELS_FILE} beside the images or labels; pass --label-map '{{\"name\": 1}}'")


def run_simulate(args: argparse.Namespace) -> int:
    images, truths = pair_cases(args.images, args.labels)
    conf = {"labels": _label_source(args), "modality": args.modality, **dict(args.conf or [])}
    settings = load_settings(conf, studies=str(args.images), app_dir=str(args.images))
    config = SimulationConfig(
        strategy=args.strategy,
        initial=args.initial,
        per_round=args.per_round,
        rounds=args.rounds,
        test_fraction=args.test_fraction,
        seed=args.seed,
        split_seed=args.split_seed,
        epochs_per_round=args.epochs_per_round,
        steps_per_epoch=args.steps_per_epoch,
        mc_samples=args.mc_samples,
        audit_threshold=args.audit_threshold,
        patience=args.patience,
        cold_start=args.cold_start,
        unit=args.unit,
        slices_per_volume=args.slices_per_volume,
    )
    prepare = {"preset": settings.preset, "labels": settings.labels}
    volumes = (
        load_cached(images, truths, cache=args.cache, **prepare)
        if args.cache
        else preprocess(images, truths, **prepare)
    )
    run = simulate_slices if config.unit == "slices" else simulate
    results = run(
        images,
        truths,
        labels=settings.labels,
        preset=settings.preset,
        spec=settings.network,
        config=config,
        volumes=volumes,
        train_options=settings.train_options(seed=args.seed),
        device=settings.device,
        progress=not args.quiet,
    )
    atomic_write_json(args.out, results)
    summary = results["summary"]
    if config.unit == "slices":
        print(
            f"{config.strategy} slices seed {config.seed}: final test mean Dice {summary['final_test_mean_dice']:.3f} "
            f"with {summary['annotated_slice_fraction']:.1%} of the pool's slices annotated, wrote {args.out}"
        )
        return 0
    print(
        f"{config.strategy} seed {config.seed}: final test mean Dice {summary['final_test_mean_dice']:.3f}, "
        f"stop round {summary['stop_round']}, wrote {args.out}"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``simulate`` to the ``activelabel`` command line."""
    parser = subparsers.add_parser("simulate", help="simulate active learning with ground truth as the expert")
    parser.add_argument("--images", type=Path, required=True, help="folder of NIfTI images")
    parser.add_argument("--labels", type=Path, required=True, help="folder of ground-truth labels (same file names)")
    parser.add_argument("--strategy", required=True, choices=STRATEGIES, help="selection strategy, or 'all'")
    parser.add_argument(
        "--label-map", default=None, help=f"label names -> values (JSON or file; default {LABELS_FILE})"
    )
    parser.add_argument("--modality", default="mr", choices=["ct", "mr"])
    parser.add_argument("--initial", type=int, default=5, help="volumes labeled at random first (default: 5)")
    parser.add_argument("--per-round", type=int, default=5, help="volumes labeled per round (default: 5)")
    parser.add_argument("--rounds", type=int, default=5, help="selection rounds (default: 5)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out test fraction (default: 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run: initial picks, weights, training")
    parser.add_argument(
        "--split-seed", type=int, default=0, help="seed of the test split (keep it to compare runs; default: 0)"
    )
    parser.add_argument("--epochs-per-round", type=int, default=5)
    parser.add_argument("--steps-per-epoch", type=int, default=20, help="optimizer steps per epoch (default: 20)")
    parser.add_argument(
        "--patience", type=int, default=None, help="epochs without a better validation Dice before a round stops"
    )
    parser.add_argument("--mc-samples", type=int, default=4)
    parser.add_argument(
        "--cold-start",
        default="random",
        choices=["random", "diverse"],
        help="how the initial volumes are picked (diverse: farthest-first in feature space)",
    )
    parser.add_argument(
        "--unit",
        default="volumes",
        choices=["volumes", "slices"],
        help="what the expert labels: whole volumes, or only the slices the strategy asks for",
    )
    parser.add_argument(
        "--slices-per-volume", type=int, default=5, help="slices asked for per picked volume (--unit slices)"
    )
    parser.add_argument("--audit-threshold", type=float, default=0.8, help="accept an auto-label at this Dice")
    parser.add_argument("--cache", type=Path, default=None, help="file caching the pre-processed volumes")
    parser.add_argument("--conf", nargs=2, action="append", metavar=("KEY", "VALUE"), help="app setting, repeatable")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--out", type=Path, required=True, help="results JSON")
    parser.set_defaults(func=run_simulate)
