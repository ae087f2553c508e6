"""A useful model from the first volume: the shipped starting model, and checkpoints a lab brings."""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch
from monailabel.client import MONAILabelClient

from activelabel.cli import build_parser, main
from activelabel.commands.serve import server_command
from activelabel.data.layout import truth_path
from activelabel.data.phantoms import generate_datastore
from activelabel.data.starter_model import StarterSource, install_starter_model, shipped_starter, starter_settings
from activelabel.ml.checkpoints import ModelStore, compact_state, expand_state
from activelabel.ml.interaction import largest_error_click
from activelabel.ml.metrics import dice_per_label, mean_dice
from activelabel.testing.server_process import ServerProcess
from tests.conftest import ServerFactory


def _store(studies: Path) -> ModelStore:
    return ModelStore(starter_settings(studies).model_dir)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fresh sample data made as ``make serve`` makes it (fewer volumes): with its starting model."""
    studies = tmp_path_factory.mktemp("sample") / "studies"
    assert main(["data", "generate", "--dest", str(studies), "--count", "3", "--modality", "ct"]) == 0
    return studies


@pytest.fixture(scope="module")
def sample_server(sample: Path, server_factory: ServerFactory) -> ServerProcess:
    """A server with the default network and the sample's own state folder (where the starter went)."""
    return server_factory.start(sample, conf={"architecture": "dynunet", "state_dir": str(sample / ".activelabel")})


def test_the_ct_starting_model_ships_compact_and_under_2_mb() -> None:
    shipped = shipped_starter("ct")
    assert shipped is not None
    assert shipped.stat().st_size < 2_000_000
    checkpoint = torch.load(shipped, weights_only=True)
    weights = [v for k, v in checkpoint["model"].items() if k in checkpoint["int8_scales"]]
    assert weights
    assert {v.dtype for v in weights} == {torch.int8}
    assert {v.dtype for v in checkpoint["model"].values() if v.is_floating_point()} == {torch.float16}


def test_a_compact_checkpoint_expands_to_the_weights_within_int8_rounding() -> None:
    layer = torch.nn.Conv3d(2, 4, 3)
    shared = {"a.weight": layer.weight, "a.bias": layer.bias, "b.weight": layer.weight}
    state = expand_state(compact_state(shared))
    assert state["b.weight"] is state["a.weight"]
    step = layer.weight.detach().abs().reshape(4, -1).amax(dim=1) / 127
    error = (state["a.weight"] - layer.weight.detach()).abs().reshape(4, -1).amax(dim=1)
    assert torch.all(error <= step * 0.6)  # half a step, plus the float16 rounding of the scale
    assert state["a.bias"].dtype == torch.float32


def test_the_first_served_volume_gets_a_useful_presegmentation_without_any_training(
    sample: Path, sample_server: ServerProcess, tmp_path: Path
) -> None:
    info = requests.get(f"{sample_server.url}/info/", timeout=30).json()["activelabel"]["model"]
    assert info["version"] == 1
    assert info["trained"]
    assert "ct-segmentation.pt" in info["origin"]
    assert info["train_count"] == 0, "labels submitted later must all count towards retraining"
    client = MONAILabelClient(sample_server.url, tmpdir=str(tmp_path), client_id="first")
    image_id = client.next_sample("random", {})["id"]
    label_file, _ = client.infer("segmentation", image_id, {})
    prediction = np.asarray(nib.load(label_file).dataobj)
    truth = np.asarray(nib.load(truth_path(sample, image_id)).dataobj)
    per_label = dice_per_label(prediction, truth, {"liver": 1, "spleen": 2, "kidney_right": 3, "kidney_left": 4})
    assert mean_dice(per_label.values()) >= 0.8, per_label
    after = requests.get(f"{sample_server.url}/info/", timeout=30).json()["activelabel"]["model"]
    assert after["version"] == 1, "serving the sample must not have trained anything"


def test_a_click_on_the_first_served_volume_is_refined_without_any_training(
    sample: Path, sample_server: ServerProcess, tmp_path: Path
) -> None:
    info = requests.get(f"{sample_server.url}/info/", timeout=30).json()["activelabel"]["refine_model"]
    assert info["version"] == 1
    assert "ct-refine.pt" in info["origin"]
    client = MONAILabelClient(sample_server.url, tmpdir=str(tmp_path), client_id="clicks")
    image_id = "ct_001"
    label_file, _ = client.infer("segmentation", image_id, {})
    mask = np.asarray(nib.load(label_file).dataobj).astype(np.int64)
    truth = np.asarray(nib.load(truth_path(sample, image_id)).dataobj).astype(np.int64)
    click = largest_error_click(mask, truth)
    assert click is not None
    names = {0: "background", 1: "liver", 2: "spleen", 3: "kidney_right", 4: "kidney_left"}
    refined_file, _ = client.infer("refine", image_id, {names[click.channel]: [list(click.point)]}, label_in=label_file)
    refined = np.asarray(nib.load(refined_file).dataobj).astype(np.int64)
    assert refined.shape == mask.shape
    channels = {"liver": 1, "spleen": 2, "kidney_right": 3, "kidney_left": 4}
    before = mean_dice(dice_per_label(mask, truth, channels).values())
    after = mean_dice(dice_per_label(refined, truth, channels).values())
    assert after >= before - 0.005, (before, after)
    assert not np.array_equal(refined, mask), "the click changed nothing"


def test_generating_again_keeps_the_model_and_no_model_leaves_version_0(tmp_path: Path, sample: Path) -> None:
    assert install_starter_model(sample, modality="ct").source is StarterSource.EXISTING
    bare = tmp_path / "bare"
    assert main(["data", "generate", "--dest", str(bare), "--count", "1", "--modality", "ct", "--no-model"]) == 0
    assert _store(bare).info() is None
    other = tmp_path / "other-network"
    generate_datastore(other, modality="ct", count=1, seed=0)
    outcome = install_starter_model(other, modality="ct", conf={"channels": "8,16,32,64"})
    assert outcome.source is StarterSource.NONE
    assert not outcome.info.trained


def _serve_args(studies: Path, model: Path) -> argparse.Namespace:
    return build_parser().parse_args(["serve", "--studies", str(studies), "--model", str(model)])


def test_an_exported_checkpoint_starts_another_project_once(
    sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exported = tmp_path / "lab-model.pt"
    assert main(["model", "export", "--studies", str(sample), "--out", str(exported)]) == 0
    assert capsys.readouterr().out == f"exported segmentation model version 1 to {exported}\n"
    project = tmp_path / "project"
    generate_datastore(project, modality="ct", count=1, seed=7)
    server_command(_serve_args(project, exported))
    imported = _store(project).info()
    assert imported is not None
    assert imported.version == 1
    assert "lab-model.pt" in (imported.origin or "")
    server_command(_serve_args(project, exported))  # the same file again: nothing new
    assert _store(project).info().version == 1


def test_a_checkpoint_for_other_labels_or_not_a_checkpoint_is_refused_in_one_line(
    sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exported = tmp_path / "ct.pt"
    assert main(["model", "export", "--studies", str(sample), "--out", str(exported)]) == 0
    mr = tmp_path / "mr"
    generate_datastore(mr, modality="mr", count=1, seed=0)
    capsys.readouterr()
    assert main(["model", "import", str(exported), "--studies", str(mr)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert err.count("\n") == 1
    assert "was trained for labels" in err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["model", "import", str(junk), "--studies", str(mr)]) == 2
    assert "is not an ActiveLabel checkpoint" in capsys.readouterr().err
    assert main(["model", "import", str(tmp_path / "missing.pt"), "--studies", str(mr)]) == 2
    assert "no checkpoint file at" in capsys.readouterr().err
    assert _store(mr).info() is None or not _store(mr).info().trained
