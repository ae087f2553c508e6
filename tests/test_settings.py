"""Configuration: defaults, overrides from --conf and env, and one clear error per bad key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from activelabel.config import ConfigError, load_settings
from activelabel.ml.transforms import Modality
from activelabel.ml.uncertainty import UncertaintyMetric


@pytest.fixture
def studies(tmp_path: Path) -> Path:
    (tmp_path / "labels.json").write_text(json.dumps({"liver": 1, "kidney": 5}))
    return tmp_path


def test_defaults_read_labels_from_the_studies_folder(studies: Path) -> None:
    settings = load_settings({}, studies=str(studies), app_dir="/app", env={})
    assert settings.labels.to_dict() == {"liver": 1, "kidney": 5}
    assert settings.network.out_channels == 3
    assert settings.preset.modality is Modality.CT
    assert settings.state_dir == studies / ".activelabel"
    assert settings.model_dir == studies / ".activelabel" / "model"
    assert settings.uncertainty_metric is UncertaintyMetric.MUTUAL_INFORMATION


def test_conf_overrides_env_which_overrides_defaults(studies: Path) -> None:
    env = {"ACTIVELABEL_MC_SAMPLES": "3", "ACTIVELABEL_MODALITY": "mr"}
    settings = load_settings({"mc_samples": "5"}, studies=str(studies), app_dir="/app", env=env)
    assert settings.mc_samples == 5
    assert settings.preset.modality is Modality.MR
    assert settings.preset.spacing == (1.0, 1.0, 1.0)


def test_spacing_and_roi_override_the_preset(studies: Path) -> None:
    conf = {"spacing": "none", "roi_size": "32,32,16"}
    settings = load_settings(conf, studies=str(studies), app_dir="/app", env={})
    assert settings.preset.spacing is None
    assert settings.preset.roi_size == (32, 32, 16)


def test_inline_labels_json_is_accepted(tmp_path: Path) -> None:
    settings = load_settings({"labels": '{"a": 2, "b": 1}'}, studies=str(tmp_path), app_dir="/app", env={})
    assert settings.labels.names == ("b", "a")


def test_remote_studies_keep_state_under_the_app(tmp_path: Path) -> None:
    conf = {"labels": '{"a": 1}'}
    settings = load_settings(conf, studies="http://127.0.0.1:8042/dicom-web", app_dir=str(tmp_path), env={})
    assert settings.state_dir.parent == tmp_path / "state"


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"mc_samples": "0"}, "'mc_samples'"),
        ({"modality": "xray"}, "'modality'"),
        ({"spacing": "1,2"}, "'spacing'"),
        ({"uncertainty_metric": "dice"}, "'uncertainty_metric'"),
        ({"roi_size": "30,32,32"}, "multiple of 8"),
        ({"labels": '{"a": 0.5}'}, "'labels'"),
        ({"dropout": "1.5"}, "'dropout'"),
    ],
)
def test_invalid_values_name_their_key(studies: Path, conf: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(conf, studies=str(studies), app_dir="/app", env={})


def test_missing_labels_explain_how_to_configure_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no labels configured"):
        load_settings({}, studies=str(tmp_path), app_dir="/app", env={})
