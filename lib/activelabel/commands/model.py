"""The ``activelabel model`` command: export a project's checkpoint, import one a lab brings.

Both resolve the project's settings as ``serve`` does (studies, ``--conf``), so an import is
checked against the network and labels the server will use.  Handlers return an exit code:
0 with one summary line, or a raised :class:`~activelabel.errors.UsageError` the CLI prints
as one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from activelabel.config import DEFAULT_APP_DIR, Settings, load_settings, resolve_studies
from activelabel.errors import UsageError
from activelabel.ml.checkpoints import ModelInfo, ModelStore
from activelabel.ml.interaction import refine_spec

MODELS = ("segmentation", "refine")
"""The checkpoints of a project: the segmentation network and the click-conditioned refinement network."""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``model export`` and ``model import`` to the main parser's sub-commands."""
    model = subparsers.add_parser(
        "model",
        help="export a project's model checkpoint or import one into a project",
        description="Export the published checkpoint of a project, or publish a checkpoint file as its next version.",
    )
    actions = model.add_subparsers(dest="model_command", required=True, metavar="{export,import}")
    export = actions.add_parser("export", help="copy the published checkpoint to a file")
    export.add_argument("--out", type=Path, required=True, help="checkpoint file to write (.pt)")
    export.set_defaults(func=run_export)
    imported = actions.add_parser("import", help="publish a checkpoint file as the project's next model version")
    imported.add_argument("file", type=Path, help="checkpoint file (written by `activelabel model export`)")
    imported.set_defaults(func=run_import)
    for parser in (export, imported):
        parser.add_argument("--studies", required=True, help="the project's datastore folder, or its DICOMweb URL")
        parser.add_argument("--name", choices=MODELS, default=MODELS[0], help="which network (default: segmentation)")
        parser.add_argument(
            "--conf", nargs=2, action="append", metavar=("KEY", "VALUE"), help="app setting, as for serve"
        )


def project_store(studies: str, conf: dict[str, str], *, name: str = MODELS[0]) -> tuple[ModelStore, Settings]:
    """The project's checkpoint store of ``name`` and its settings (as the server resolves them)."""
    settings = load_settings(conf, studies=resolve_studies(studies), app_dir=str(DEFAULT_APP_DIR))
    return ModelStore(settings.model_dir, name=name), settings


def import_model(file: Path, *, studies: str, conf: dict[str, str], name: str = MODELS[0]) -> ModelInfo | None:
    """Publish ``file`` in the project of ``studies``; ``None`` when that file was imported before.

    Raises:
        UsageError: a missing or unreadable file, or a checkpoint for other labels or another network.
    """
    if not file.is_file():
        raise UsageError(f"no checkpoint file at {file}")
    store, settings = project_store(studies, conf, name=name)
    spec = settings.network if name == MODELS[0] else refine_spec(settings.network)
    try:
        return store.import_checkpoint(file, spec=spec, labels=settings.labels.to_dict())
    except ValueError as error:
        raise UsageError(str(error)) from None


def run_export(args: argparse.Namespace) -> int:
    """Handle ``model export``."""
    store, _ = project_store(args.studies, dict(args.conf or []), name=args.name)
    try:
        info = store.export(args.out)
    except FileNotFoundError:
        raise UsageError(f"no {args.name} model published in {store.directory}") from None
    print(f"exported {args.name} model version {info.version} to {args.out}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    """Handle ``model import``."""
    info = import_model(args.file, studies=args.studies, conf=dict(args.conf or []), name=args.name)
    if info is None:
        print(f"{args.file} was imported before: nothing to do")
    else:
        print(f"imported {args.file} as {args.name} model version {info.version}")
    return 0
