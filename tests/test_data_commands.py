"""Datastore layout and the ``activelabel data generate|fetch`` command handlers."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from activelabel.cli import build_parser, main
from activelabel.commands import data as commands
from activelabel.data.layout import (
    DatastoreError,
    DatastoreExistsError,
    DatastoreSummary,
    check_writable,
    write_datastore,
)
from activelabel.data.phantoms import PHANTOM_LABELS, Phantom, generate_datastore, generate_phantom
from activelabel.ml.transforms import Modality
from activelabel.testing.datasets import MSD_HIPPOCAMPUS

SMALL = (24, 26, 20)
MSD_MIRROR = MSD_HIPPOCAMPUS


def run(argv: list[str]) -> int:
    """The ``activelabel`` command line's exit code for ``argv``."""
    return main(argv)


def small_cases(modality: Modality, count: int) -> list[tuple[str, Phantom]]:
    return [
        (f"{modality.value}_{i:03d}", generate_phantom(modality=modality, index=i, shape=SMALL)) for i in range(count)
    ]


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.nii.gz"))


def test_write_datastore_puts_images_truth_final_labels_and_labels_json_in_place(tmp_path: Path) -> None:
    cases = small_cases(Modality.CT, 3)

    summary = write_datastore(tmp_path, cases, labels=PHANTOM_LABELS[Modality.CT], labeled=2)

    assert summary == DatastoreSummary(dest=tmp_path, images=3, labeled=2, labels=PHANTOM_LABELS[Modality.CT])
    assert names(tmp_path) == ["ct_000.nii.gz", "ct_001.nii.gz", "ct_002.nii.gz"]
    assert names(tmp_path / "truth") == ["ct_000.nii.gz", "ct_001.nii.gz", "ct_002.nii.gz"]
    assert names(tmp_path / "labels" / "final") == ["ct_000.nii.gz", "ct_001.nii.gz"]
    assert json.loads((tmp_path / "labels.json").read_text()) == PHANTOM_LABELS[Modality.CT]
    assert not list(tmp_path.rglob("*.tmp")), "no temporary files should remain"


def test_written_volumes_round_trip_with_their_affine_and_dtypes(tmp_path: Path) -> None:
    (case, volume) = small_cases(Modality.CT, 1)[0]
    write_datastore(tmp_path, [(case, volume)], labels=PHANTOM_LABELS[Modality.CT], labeled=1)

    image = nib.load(tmp_path / f"{case}.nii.gz")
    truth = nib.load(tmp_path / "truth" / f"{case}.nii.gz")
    final = nib.load(tmp_path / "labels" / "final" / f"{case}.nii.gz")
    np.testing.assert_array_equal(np.asarray(image.dataobj), volume.image)
    np.testing.assert_array_equal(np.asarray(truth.dataobj), volume.label)
    np.testing.assert_array_equal(np.asarray(final.dataobj), volume.label)
    for loaded in (image, truth):
        np.testing.assert_allclose(loaded.affine, volume.affine)
        assert nib.aff2axcodes(loaded.affine) == ("R", "A", "S")
    assert image.get_data_dtype() == np.int16
    assert truth.get_data_dtype() == np.uint8


def test_monai_label_sees_every_image_and_only_the_labeled_ones_as_labeled(tmp_path: Path) -> None:
    from monailabel.datastore.local import LocalDatastore

    write_datastore(tmp_path, small_cases(Modality.MR, 4), labels=PHANTOM_LABELS[Modality.MR], labeled=1)

    datastore = LocalDatastore(str(tmp_path), extensions=("*.nii.gz", "*.nii"), auto_reload=False)
    assert sorted(datastore.list_images()) == ["mr_000", "mr_001", "mr_002", "mr_003"]
    assert datastore.get_labeled_images() == ["mr_000"]


def test_existing_image_is_not_overwritten_unless_asked(tmp_path: Path) -> None:
    labels = PHANTOM_LABELS[Modality.CT]
    write_datastore(tmp_path, small_cases(Modality.CT, 2), labels=labels, labeled=2)
    before = (tmp_path / "ct_001.nii.gz").read_bytes()
    replacement = [("ct_001", generate_phantom(modality=Modality.CT, index=9, shape=SMALL))]

    with pytest.raises(DatastoreExistsError, match=r"ct_001\.nii\.gz.*already exist"):
        write_datastore(tmp_path, replacement, labels=labels, labeled=0)
    assert (tmp_path / "ct_001.nii.gz").read_bytes() == before

    write_datastore(tmp_path, replacement, labels=labels, labeled=0, overwrite=True)
    assert (tmp_path / "ct_001.nii.gz").read_bytes() != before
    assert names(tmp_path / "labels" / "final") == ["ct_000.nii.gz"], "a stale final label must not survive"


def test_datastore_with_other_labels_is_refused(tmp_path: Path) -> None:
    write_datastore(tmp_path, small_cases(Modality.CT, 1), labels=PHANTOM_LABELS[Modality.CT], labeled=0)
    with pytest.raises(DatastoreError, match=r"labels\.json"):
        check_writable(tmp_path, ["mr_000"], labels=PHANTOM_LABELS[Modality.MR])


def test_labeled_count_outside_the_cases_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(DatastoreError, match="exceeds"):
        write_datastore(tmp_path / "a", small_cases(Modality.MR, 2), labels=PHANTOM_LABELS[Modality.MR], labeled=3)
    with pytest.raises(DatastoreError, match=">= 0"):
        write_datastore(tmp_path / "b", small_cases(Modality.MR, 1), labels=PHANTOM_LABELS[Modality.MR], labeled=-1)
    assert not list(tmp_path.iterdir())


def test_generate_datastore_is_deterministic_in_its_seed(tmp_path: Path) -> None:
    first = generate_datastore(tmp_path / "one", modality="mr", count=2, seed=4, labeled=1)
    second = generate_datastore(tmp_path / "two", modality=Modality.MR, count=2, seed=4, labeled=1)
    assert first.to_dict() == {**second.to_dict(), "dest": str(tmp_path / "one")}
    for name in ("mr_000.nii.gz", "mr_001.nii.gz", "truth/mr_001.nii.gz", "labels/final/mr_000.nii.gz"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_generate_command_writes_the_datastore_and_prints_one_summary_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "studies"

    code = run(
        ["data", "generate", "--dest", str(dest), "--count", "3", "--labeled", "1", "--modality", "ct", "--no-model"]
    )

    out, err = capsys.readouterr()
    assert code == 0
    assert out == f"generated 3 ct volumes (1 labeled) in {dest}\n"
    assert err == ""
    assert names(dest) == ["ct_000.nii.gz", "ct_001.nii.gz", "ct_002.nii.gz"]
    assert names(dest / "labels" / "final") == ["ct_000.nii.gz"]


def test_generate_command_refuses_existing_volumes_with_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "studies"
    assert run(["data", "generate", "--dest", str(dest), "--count", "1", "--modality", "mr", "--no-model"]) == 0
    capsys.readouterr()

    code = run(["data", "generate", "--dest", str(dest), "--count", "2", "--modality", "mr", "--no-model"])

    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.startswith("error: ")
    assert err.count("\n") == 1
    assert "already exist" in err
    assert names(dest) == ["mr_000.nii.gz"], "nothing may be written by a refused call"
    assert (
        run(["data", "generate", "--dest", str(dest), "--count", "2", "--modality", "mr", "--overwrite", "--no-model"])
        == 0
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--count", "0"], "count must be >= 1"),
        (["--count", "2", "--labeled", "3"], "labeled must be between 0 and count"),
        (["--seed", "-1"], "seed must be >= 0"),
    ],
)
def test_generate_command_reports_bad_arguments_as_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    code = run(["data", "generate", "--dest", str(tmp_path / "studies"), *extra])

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {message}")
    assert err.count("\n") == 1
    assert not (tmp_path / "studies").exists()


def test_generate_defaults_match_the_documented_ones() -> None:
    args = build_parser().parse_args(["data", "generate", "--dest", "x"])
    assert (args.count, args.modality, args.seed, args.labeled, args.overwrite) == (12, "ct", 0, 0, False)
    assert args.func is commands.run_generate


@pytest.mark.skipif(not (MSD_MIRROR / "imagesTr").is_dir(), reason=f"MSD mirror not found at {MSD_MIRROR}")
def test_fetch_command_from_a_mirror_prints_one_summary_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "hippo"

    code = run(["data", "fetch", "msd-hippocampus", "--dest", str(dest), "--mirror", str(MSD_MIRROR), "--labeled", "2"])

    assert code == 0
    assert capsys.readouterr().out == f"fetched 200 msd-hippocampus volumes (2 labeled) in {dest}\n"
    assert len(names(dest / "labels" / "final")) == 2


def test_fetch_command_reports_a_missing_mirror_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["data", "fetch", "msd-hippocampus", "--dest", str(tmp_path / "d"), "--mirror", str(tmp_path / "no")])

    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.startswith("error: mirror ")
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_data_without_a_sub_command_or_with_an_unknown_data_set_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["data"], ["data", "fetch", "imagenet", "--dest", str(tmp_path)]):
        with pytest.raises(SystemExit) as exited:
            run(argv)
        assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err
