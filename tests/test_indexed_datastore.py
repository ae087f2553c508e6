"""The SQLite-kept folder datastore: same answers as MONAI Label's, row-by-row writes, cross-process sync."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from monailabel.datastore.local import LocalDatastore

from activelabel.datastore.index_db import DatastoreDatabase
from activelabel.datastore.indexed import DATABASE_FILE, IndexedLocalDatastore
from activelabel.ml.uncertainty import VolumeUncertainty
from activelabel.store.scores import ScoreStore
from tests.helpers import tiny_datastore

EXT = ("*.nii.gz",)


@pytest.fixture
def studies(tmp_path: Path) -> Path:
    return tiny_datastore(tmp_path / "studies", ["a", "b", "c", "d"], labeled=["a", "b"])


def _open(studies: Path) -> IndexedLocalDatastore:
    return IndexedLocalDatastore(str(studies), extensions=EXT)


def test_answers_match_monai_label_local_datastore(studies: Path, tmp_path: Path) -> None:
    stock_root = tmp_path / "stock"
    shutil.copytree(studies, stock_root)
    stock = LocalDatastore(str(stock_root), extensions=EXT)
    ours = _open(studies)
    assert sorted(ours.list_images()) == sorted(stock.list_images())
    assert sorted(ours.get_labeled_images()) == sorted(stock.get_labeled_images()) == ["a", "b"]
    assert sorted(ours.get_unlabeled_images()) == sorted(stock.get_unlabeled_images()) == ["c", "d"]
    assert ours.status() == stock.status()
    assert ours.get_image_uri("c") == str((studies / "c.nii.gz").resolve())
    assert ours.labeled_count() == 2
    assert [ours.is_unlabeled(i) for i in ("a", "c", "missing")] == [False, True, False]


def test_existing_json_datastore_is_imported_once_with_its_info(studies: Path, tmp_path: Path) -> None:
    stock = LocalDatastore(str(studies), extensions=EXT)
    stock.update_image_info("c", {"note": "from the JSON era"})
    ours = _open(studies)
    assert ours.get_image_info("c")["note"] == "from the JSON era"
    ours.update_image_info("c", {"note": "changed"})
    assert _open(studies).get_image_info("c")["note"] == "changed"  # the database, not the JSON, is read now


def test_update_image_info_writes_only_that_row(studies: Path) -> None:
    ours = _open(studies)
    database = DatastoreDatabase(studies / ".activelabel" / DATABASE_FILE)
    before = database.changes(0).seq
    ours.update_image_info("d", {"strategy": {"most_uncertain": {"ts": 1}}})
    changed = database.changes(before)
    assert list(changed.entries) == ["d"]
    assert not (studies / "datastore_v2.json").exists() or "strategy" not in (studies / "datastore_v2.json").read_text()


def test_another_process_sees_new_labels_and_removed_images_after_sync(studies: Path) -> None:
    writer, reader = _open(studies), _open(studies)
    label = studies / "labels" / "final" / "a.nii.gz"
    writer.save_label("c", str(label), "final", {})
    (studies / "d.nii.gz").unlink()
    writer.refresh()
    assert reader.is_unlabeled("c")
    reader.sync()
    assert not reader.is_unlabeled("c")
    assert "d" not in reader.list_images()
    assert reader.status() == writer.status() == {"total": 3, "completed": 3, "label_tags": {"final": 3}}


def test_refresh_adds_new_files_and_drops_labels_whose_file_is_gone(studies: Path) -> None:
    ours = _open(studies)
    shutil.copyfile(studies / "c.nii.gz", studies / "e.nii.gz")
    (studies / "labels" / "final" / "b.nii.gz").unlink()
    ours.refresh()
    assert sorted(ours.get_unlabeled_images()) == ["b", "c", "d", "e"]
    assert ours.labeled_count() == 1
    assert sorted(_open(studies).get_unlabeled_images()) == ["b", "c", "d", "e"]


def _scores(tmp_path: Path, values: dict[str, float]) -> ScoreStore:
    store = ScoreStore(tmp_path / "scores.sqlite")
    for image_id, value in values.items():
        uncertainty = VolumeUncertainty(
            entropy=value, mutual_information=value, variance=value, foreground_fraction=0.1, samples=2
        )
        store.put(image_id, 1, uncertainty, seconds=0.0)
    return store


def test_top_score_walks_past_refused_images_and_breaks_ties_by_id(tmp_path: Path) -> None:
    store = _scores(tmp_path, {"a": 0.9, "b": 0.5, "c": 0.5, "d": 0.1})
    assert store.top("entropy", accept=lambda image_id: True).image_id == "a"
    assert store.top("entropy", accept=lambda image_id: image_id != "a").image_id == "b"
    assert store.top("variance", accept=lambda image_id: image_id in {"c", "d"}).image_id == "c"
    assert store.top("entropy", accept=lambda image_id: False) is None


def test_forgotten_score_is_no_longer_ranked(tmp_path: Path) -> None:
    store = _scores(tmp_path, {"a": 0.9, "b": 0.5})
    store.forget("a")
    assert store.count() == 1
    assert store.top("mutual_information", accept=lambda image_id: True).image_id == "b"
