"""Peak memory of infer, scoring and the uncertainty map on a full-size 512x512x300 CT (CPU).

A deterministic CT phantom (int16 HU, 0.7 x 0.7 x 1.0 mm, liver, spleen and kidneys) is
generated once into ``bench/.cache/memory_ct`` (never committed).  Every operation then runs
in a fresh Python process, so each peak RSS belongs to one operation:

* ``baseline``: imports plus the app (``app_instance`` of ``apps/radiology_al``), no work;
* ``infer``: ``MONAILabelApp.infer`` with the ``segmentation`` task, i.e. the server's path
  (pre-processing, sliding window, inversion to the original grid, the written label);
* ``score``: :func:`activelabel.scoring.scorer.score_pool` on the volume with ``mc_samples`` passes;
* ``map``: :func:`activelabel.ml.uncertainty_map.uncertainty_map` (voxel map on the original grid),
  with ``--map-samples`` passes (2 by default: its memory does not grow with the passes).

Peak RSS is the child's ``ru_maxrss`` (imports included); ``setup`` is its resident size once
everything is imported and built, so ``peak - setup`` is the operation's own cost.  The table
states a bound per operation and whether the run stayed within it; the figures, the bounds
and digests of the results (to compare runs) go to ``bench/results/memory_ct.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

CACHE = REPO / "bench" / ".cache" / "memory_ct"
RESULTS = REPO / "bench" / "results" / "memory_ct.json"
IMAGE_ID = "ct_512x512x300"
SHAPE = (512, 512, 300)
SPACING = (0.7, 0.7, 1.0)
MIB = 1024 * 1024
GIB = 1024 * MIB

BOUNDS_GIB: dict[str, float] = {"baseline": 1.0, "infer": 2.0, "score": 2.0, "map": 2.5}
"""Stated peak-RSS bound per operation for this 512x512x300 int16 CT on CPU (GiB, imports included)."""


@dataclass(frozen=True)
class Context:
    """Where a child process finds the studies and keeps its state, and the map's MC passes."""

    studies: Path
    state: Path
    map_samples: int


Work = tuple[Callable[[], dict[str, Any]], Callable[[dict[str, Any]], dict[str, Any]] | None]
"""An operation's measured work and an optional check run after the peak is read."""


def _rss_bytes() -> int:
    """Current resident set size of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line in /proc/self/status")


def _peak_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _digest(array: Any) -> str:
    import numpy as np

    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def _settings_conf(state: Path) -> dict[str, str]:
    return {"state_dir": str(state), "device": "cpu", "retrain_after": "0"}


def _generate(studies: Path) -> dict[str, Any]:
    """Write the phantom (and the datastore's labels file) into ``studies``."""
    import nibabel as nib

    from activelabel.data.phantoms import PHANTOM_LABELS, generate_phantom
    from activelabel.labelmap import LABELS_FILE
    from activelabel.ml.transforms import Modality

    phantom = generate_phantom(modality=Modality.CT, index=0, seed=0, shape=SHAPE, spacing=SPACING)
    studies.mkdir(parents=True, exist_ok=True)
    (studies / LABELS_FILE).write_text(json.dumps(PHANTOM_LABELS[Modality.CT]))
    nib.save(nib.Nifti1Image(phantom.image, phantom.affine), str(studies / f"{IMAGE_ID}.nii.gz"))
    return {"image_sha256": _digest(phantom.image)}


def _app(ctx: Context) -> Any:
    from monailabel.interfaces.utils.app import app_instance

    from activelabel.config import DEFAULT_APP_DIR

    return app_instance(app_dir=str(DEFAULT_APP_DIR), studies=str(ctx.studies), conf=_settings_conf(ctx.state))


def _baseline(ctx: Context) -> Work:
    _app(ctx)
    return (lambda: {}), None


def _infer(ctx: Context) -> Work:
    import nibabel as nib
    import numpy as np

    app = _app(ctx)

    def work() -> dict[str, Any]:
        result = app.infer({"model": "segmentation", "image": IMAGE_ID, "device": "cpu"})
        return {"label_file": result["file"]}

    def check(figures: dict[str, Any]) -> dict[str, Any]:
        path = Path(figures.pop("label_file"))
        label = np.asarray(nib.load(str(path)).dataobj)
        path.unlink()
        return {"label_shape": list(label.shape), "label_dtype": str(label.dtype), "label_sha256": _digest(label)}

    return work, check


def _network(ctx: Context) -> tuple[Any, Any, int]:
    """The app's settings, and its initial network (in eval mode) with the model version."""
    from activelabel.config import DEFAULT_APP_DIR, load_settings
    from activelabel.ml.checkpoints import ModelStore
    from activelabel.ml.inference import load_model

    settings = load_settings(_settings_conf(ctx.state), studies=str(ctx.studies), app_dir=str(DEFAULT_APP_DIR))
    model_store = ModelStore(settings.model_dir, name="segmentation")
    model_store.ensure_initial(settings.network, settings.labels.to_dict(), seed=settings.seed)
    network, info = load_model(model_store, device="cpu")
    return settings, network, info.version


def _score(ctx: Context) -> Work:
    import torch

    from activelabel.scoring.scorer import ScoringOptions, score_pool
    from activelabel.store.scores import ScoreStore

    settings, network, version = _network(ctx)
    scores = ScoreStore(ctx.state / "bench-scores.sqlite")
    options = ScoringOptions(
        samples=settings.mc_samples, dilation=settings.foreground_dilation, overlap=settings.sw_overlap, force=True
    )

    def work() -> dict[str, Any]:
        torch.manual_seed(0)
        images = {IMAGE_ID: str(ctx.studies / f"{IMAGE_ID}.nii.gz")}
        score_pool(
            images, network=network, model_version=version, preset=settings.preset, store=scores, options=options
        )
        stored = scores.get(IMAGE_ID)
        if stored is None:
            raise RuntimeError(f"score_pool stored no score for {IMAGE_ID}")
        return {"samples": options.samples, "scores": stored.uncertainty.to_dict()}

    return work, None


def _map(ctx: Context) -> Work:
    import torch

    from activelabel.ml.uncertainty_map import uncertainty_map

    settings, network, _ = _network(ctx)

    def work() -> dict[str, Any]:
        torch.manual_seed(0)
        with torch.inference_mode():
            array, _ = uncertainty_map(
                ctx.studies / f"{IMAGE_ID}.nii.gz",
                network=network,
                preset=settings.preset,
                metric=settings.uncertainty_metric,
                samples=ctx.map_samples,
                overlap=settings.sw_overlap,
            )
        return {
            "samples": ctx.map_samples,
            "map_shape": list(array.shape),
            "map_dtype": str(array.dtype),
            "map_mean": float(array.mean(dtype="float64")),
            "map_max": float(array.max()),
        }

    return work, None


OPERATIONS: dict[str, Callable[[Context], Work]] = {
    "baseline": _baseline,
    "infer": _infer,
    "score": _score,
    "map": _map,
}


def child(operation: str, ctx: Context) -> dict[str, Any]:
    """Run one operation in this (fresh) process and measure it."""
    if operation == "generate":
        began = time.perf_counter()
        figures = _generate(ctx.studies)
        return {**figures, "seconds": time.perf_counter() - began, "peak_rss": _peak_bytes()}
    work, check = OPERATIONS[operation](ctx)
    setup_rss, setup_peak = _rss_bytes(), _peak_bytes()
    began = time.perf_counter()
    figures = work()
    seconds = time.perf_counter() - began
    peak = _peak_bytes()
    if check is not None:
        figures.update(check(figures))
    return {"setup_rss": setup_rss, "setup_peak_rss": setup_peak, "peak_rss": peak, "seconds": seconds, **figures}


def _run_child(operation: str, ctx: Context) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", operation, "--studies", str(ctx.studies), "--state", str(ctx.state)]
    command += ["--map-samples", str(ctx.map_samples)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"'{operation}' failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def ensure_volume(cache: Path) -> Path:
    """The studies folder holding the phantom, generated (in a child process) when missing."""
    studies = cache / "studies"
    if not (studies / f"{IMAGE_ID}.nii.gz").is_file():
        print(f"generating the {'x'.join(map(str, SHAPE))} CT phantom into {studies} …", flush=True)
        figures = _run_child("generate", Context(studies=studies, state=cache, map_samples=0))
        print(f"  {figures['seconds']:.0f} s, peak {figures['peak_rss'] / GIB:.2f} GiB", flush=True)
    return studies


def _table(results: dict[str, dict[str, Any]]) -> None:
    print(f"{'operation':<10} {'setup MiB':>10} {'peak MiB':>10} {'work MiB':>10} {'bound MiB':>10} {'seconds':>8}  ok")
    for name, figures in results.items():
        bound = BOUNDS_GIB[name] * GIB
        work = figures["peak_rss"] - figures["setup_rss"]
        verdict = "yes" if figures["peak_rss"] <= bound else "NO"
        print(
            f"{name:<10} {figures['setup_rss'] / MIB:>10.0f} {figures['peak_rss'] / MIB:>10.0f} "
            f"{work / MIB:>10.0f} {bound / MIB:>10.0f} {figures['seconds']:>8.1f}  {verdict}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", nargs="+", choices=list(OPERATIONS), default=list(OPERATIONS))
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--compare", type=Path, help="an earlier memory_ct.json to print and keep as 'before'")
    parser.add_argument(
        "--map-samples", type=int, default=2, help="MC passes of the map (memory does not grow with them)"
    )
    parser.add_argument("--child", choices=[*OPERATIONS, "generate"], help=argparse.SUPPRESS)
    parser.add_argument("--studies", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        ctx = Context(studies=args.studies, state=args.state, map_samples=args.map_samples)
        print(json.dumps(child(args.child, ctx)))
        return

    studies = ensure_volume(args.cache)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="activelabel-memory-") as tmp:
        for operation in args.operations:
            print(f"running {operation} in a fresh process …", flush=True)
            ctx = Context(studies=studies, state=Path(tmp) / "state", map_samples=args.map_samples)
            results[operation] = _run_child(operation, ctx)
    _table(results)
    before = json.loads(args.compare.read_text())["results"] if args.compare else {}
    for name, figures in before.items():
        if name in results:
            earlier, now = figures["peak_rss"] / MIB, results[name]["peak_rss"] / MIB
            print(f"{name:<10} peak before {earlier:>7.0f} MiB, now {now:.0f} MiB")
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "volume": {"shape": list(SHAPE), "spacing_mm": list(SPACING), "dtype": "int16"},
        "bounds_bytes": {name: int(BOUNDS_GIB[name] * GIB) for name in results},
        "within_bounds": {name: r["peak_rss"] <= BOUNDS_GIB[name] * GIB for name, r in results.items()},
        "results": results,
        "before": before,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
