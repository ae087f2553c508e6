"""PACS integration: a real Orthanc (the ``make pacs`` configuration) and a real server on it.

Orthanc must be installed (``make test`` installs it with apt-get); without it these tests
fail, they are never skipped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
import SimpleITK as sitk
from monailabel.client import MONAILabelClient

from activelabel.data.phantoms import PHANTOM_LABELS, generate_datastore
from activelabel.data.to_dicom import ConvertedSeries, datastore_to_dicom
from activelabel.labelmap import LabelMap
from activelabel.ml.transforms import Modality
from activelabel.pacs.dicom_seg import SegmentOrigin, build_seg, seg_to_labelmap
from activelabel.pacs.dicomweb import PacsAuthError, PacsClient
from activelabel.pacs.geometry import GeometryMismatch, SeriesGeometry
from activelabel.pacs.orthanc import (
    DICOMWEB_ROOT,
    OrthancConfig,
    OrthancError,
    config_document,
    find_dicomweb_plugin,
    find_orthanc,
    start_orthanc,
    stop_orthanc,
    upload,
)
from activelabel.testing.server_process import ServerProcess, free_port
from tests.conftest import ServerFactory
from tests.helpers import SHARED_DATASETS

TOTALSEG = SHARED_DATASETS / "ct-dicom-totalseg"
DCMQI = SHARED_DATASETS / "ct-dicom-dcmqi"
CT_LABELS = LabelMap.from_mapping(PHANTOM_LABELS[Modality.CT])
DCMQI_SERIES = "1.2.392.200103.20080913.113635.1.2009.6.22.21.43.10.23430.1"


def _require_orthanc() -> None:
    try:
        find_orthanc()
        find_dicomweb_plugin()
    except OrthancError as error:
        pytest.fail(f"the PACS tests need Debian's orthanc and orthanc-dicomweb: {error}")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancConfig]:
    """A running Orthanc on a free port with the project's configuration."""
    _require_orthanc()
    config = OrthancConfig(tmp_path_factory.mktemp("pacs"), port=free_port(), user="al-test", password="pw-test")
    start_orthanc(config)
    try:
        yield config
    finally:
        stop_orthanc(config.data_dir)


@pytest.fixture(scope="module")
def sample_series(tmp_path_factory: pytest.TempPathFactory) -> dict[Modality, list[ConvertedSeries]]:
    """Two CT phantoms and one MR phantom as DICOM series."""
    root = tmp_path_factory.mktemp("phantoms")
    generate_datastore(root / "ct", modality="ct", count=2, seed=0, labeled=0)
    generate_datastore(root / "mr", modality="mr", count=1, seed=1, labeled=0)
    return {
        Modality.CT: datastore_to_dicom(root / "ct", root / "dicom", modality=Modality.CT),
        Modality.MR: datastore_to_dicom(root / "mr", root / "dicom", modality=Modality.MR),
    }


@pytest.fixture(scope="module")
def loaded(pacs: OrthancConfig, sample_series: dict[Modality, list[ConvertedSeries]]) -> OrthancConfig:
    """The PACS with the phantoms, both real CT series and the dcmqi liver SEG."""
    folders = [s.folder for series in sample_series.values() for s in series]
    upload(pacs, [*folders, TOTALSEG / "ct", DCMQI / "ct", DCMQI / "seg_liver.dcm"])
    return pacs


@pytest.fixture(scope="module")
def pacs_server(loaded: OrthancConfig, server_factory: ServerFactory) -> ServerProcess:
    """``activelabel serve --studies <DICOMweb URL>`` on the loaded PACS."""
    conf = {
        "labels": json.dumps(CT_LABELS.to_dict()),
        "pacs_user": loaded.user,
        "pacs_password": loaded.password,
        "pacs_list_seconds": "0",
        "pacs_timeout": "5",
    }
    return server_factory.start(loaded.dicomweb_url, conf=conf)


def _client(pacs: OrthancConfig) -> PacsClient:
    return PacsClient(pacs.dicomweb_url, user=pacs.user, password=pacs.password)


def _segs(pacs: OrthancConfig) -> list[str]:
    return sorted(r.series_uid for r in _client(pacs).search_series(Modality="SEG"))


def _put_final_label(server: ServerProcess, image: str, label: Path, *, client_id: str) -> requests.Response:
    """A clinician's final label for ``image``, as the Slicer module submits it."""
    return requests.put(
        f"{server.url}/datastore/label",
        params={"image": image, "tag": "final"},
        files={"label": (label.name, label.read_bytes())},
        data={"params": json.dumps({"client_id": client_id})},
        timeout=120,
    )


def _source_headers(series: ConvertedSeries) -> list[pydicom.Dataset]:
    """The series' DICOM instances as written, without pixel data."""
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(series.folder.iterdir())]


def test_orthanc_config_is_loopback_only_with_auth_and_dicomweb(tmp_path: Path) -> None:
    config = OrthancConfig(tmp_path, port=18042, user="u", password="p")
    document = config_document(config, plugin=Path("/plugin.so"))
    assert document["RemoteAccessAllowed"] is False
    assert document["DicomServerEnabled"] is False
    assert document["AuthenticationEnabled"] is True
    assert document["RegisteredUsers"] == {"u": "p"}
    assert document["Plugins"] == ["/plugin.so"]
    assert document["DicomWeb"]["Root"] == DICOMWEB_ROOT == "/dicom-web/"
    assert document["StorageDirectory"].startswith(str(tmp_path.resolve()))
    assert config.dicomweb_url == "http://127.0.0.1:18042/dicom-web"


def test_qido_finds_uploaded_series_and_requires_credentials(
    loaded: OrthancConfig, sample_series: dict[Modality, list[ConvertedSeries]]
) -> None:
    client = _client(loaded)
    ct = {r.series_uid for r in client.search_series(Modality="CT")}
    mr = {r.series_uid for r in client.search_series(Modality="MR")}
    assert {s.series_uid for s in sample_series[Modality.CT]} <= ct
    assert {s.series_uid for s in sample_series[Modality.MR]} == mr
    assert DCMQI_SERIES in ct
    assert str(pydicom.dcmread(next((TOTALSEG / "ct").iterdir()), stop_before_pixels=True).SeriesInstanceUID) in ct
    assert len(client.search_series(Modality="SEG")) == 1
    with pytest.raises(PacsAuthError, match="credentials"):
        PacsClient(loaded.dicomweb_url, user=loaded.user, password="wrong").search_series(Modality="CT")
    assert requests.get(f"{loaded.dicomweb_url}/series", timeout=10).status_code == 401


def test_dcmqi_liver_seg_reads_back_onto_its_ct() -> None:
    ct = [pydicom.dcmread(p) for p in sorted((DCMQI / "ct").iterdir())]
    geometry = SeriesGeometry.from_datasets(ct)
    seg = pydicom.dcmread(DCMQI / "seg_liver.dcm")
    label = seg_to_labelmap(seg, geometry, LabelMap.from_mapping({"liver": 1}))
    assert label.shape == (3, 512, 512)
    assert set(np.unique(label).tolist()) == {0, 1}
    # Frames are placed by their positions; each must land on the CT slice it references.
    for frame, pixels in zip(seg.PerFrameFunctionalGroupsSequence, seg.pixel_array, strict=True):
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert np.array_equal(label[geometry.sop_uids.index(source)], pixels)
    assert [int(s.sum()) for s in label] == [36233, 35645, 35220]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in ct}
    hu = np.stack([by_uid[uid].pixel_array * float(by_uid[uid].RescaleSlope) for uid in geometry.sop_uids])
    hu += float(ct[0].RescaleIntercept)
    inside, outside = np.median(hu[label == 1]), np.median(hu[label == 0])
    assert 20 < inside < 120, "the liver mask lies on soft tissue"
    assert outside < -500, "most of the rest is air"
    columns = np.nonzero(label)[2]
    assert columns.mean() < 256, "the liver is on the patient's right (the image's left)"


def test_seg_with_shifted_geometry_is_rejected(sample_series: dict[Modality, list[ConvertedSeries]]) -> None:
    series = sample_series[Modality.CT][0]
    sources = [pydicom.dcmread(p) for p in sorted(series.folder.iterdir())]
    geometry = SeriesGeometry.from_datasets(sources)
    label = geometry.to_image(np.zeros((geometry.size[2], geometry.size[1], geometry.size[0]), dtype=np.uint8))
    label.SetOrigin(tuple(float(v) + 1.5 for v in geometry.origin))
    with pytest.raises(GeometryMismatch, match="origin"):
        build_seg(label, sources, labels=CT_LABELS, origin=SegmentOrigin.MANUAL)


def test_server_lists_ct_and_mr_series(
    pacs_server: ServerProcess, sample_series: dict[Modality, list[ConvertedSeries]]
) -> None:
    stats = requests.get(f"{pacs_server.url}/datastore/?output=stats", timeout=30).json()
    assert stats["total"] == 5
    assert stats["completed"] == 1  # the dcmqi CT has its liver SEG
    objects = requests.get(f"{pacs_server.url}/datastore/?output=all", timeout=30).json()["objects"]
    modalities = {uid: obj["image"]["info"].get("Modality") for uid, obj in objects.items()}
    assert modalities[sample_series[Modality.MR][0].series_uid] == "MR"
    assert modalities[DCMQI_SERIES] == "CT"
    answer = requests.post(f"{pacs_server.url}/activelearning/random", json={"client_id": "r1"}, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] in modalities
    assert answer.json()["id"] != DCMQI_SERIES


def test_prediction_becomes_a_seg_that_reads_back_voxel_for_voxel(
    pacs_server: ServerProcess,
    loaded: OrthancConfig,
    sample_series: dict[Modality, list[ConvertedSeries]],
    tmp_path: Path,
) -> None:
    series = sample_series[Modality.CT][0]
    client = MONAILabelClient(pacs_server.url, tmpdir=str(tmp_path), client_id="r1")
    prediction_file, params = client.infer("segmentation", series.series_uid, {"save_label": True})
    prediction = sitk.GetArrayFromImage(sitk.ReadImage(prediction_file))
    before = _segs(loaded)
    answer = _put_final_label(pacs_server, series.series_uid, Path(prediction_file), client_id="r1")
    assert answer.status_code == 200, answer.text
    assert answer.json()["submission"]["agreement"] == pytest.approx(1.0)
    [seg_uid] = sorted(set(_segs(loaded)) - set(before))
    pacs = _client(loaded)
    [record] = [r for r in pacs.search_series(Modality="SEG") if r.series_uid == seg_uid]
    assert record.study_uid == series.study_uid, "the SEG is stored under the image's study"
    [seg] = pacs.retrieve_series(record.study_uid, seg_uid)
    assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == list(CT_LABELS.names)
    liver = seg.SegmentSequence[0]
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert liver.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Anatomical Structure"
    assert liver.SegmentAlgorithmType == "SEMIAUTOMATIC"
    algorithm = liver.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "ActiveLabel segmentation"
    assert algorithm.AlgorithmVersion == f"model {params['model_version']}"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    sources = _source_headers(series)
    source_uids = {str(ds.SOPInstanceUID) for ds in sources}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        assert frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID in source_uids
    read_back = seg_to_labelmap(seg, SeriesGeometry.from_datasets(sources), CT_LABELS)
    assert read_back.shape == prediction.shape
    assert np.array_equal(read_back, prediction)


def test_training_reads_the_segs_back(pacs_server: ServerProcess) -> None:
    answer = requests.post(f"{pacs_server.url}/train/segmentation", json={"max_epochs": 1}, timeout=30)
    assert answer.status_code == 200, answer.text
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        task = requests.get(f"{pacs_server.url}/train/", timeout=30).json()
        if task.get("status") in ("DONE", "ERROR"):
            break
        time.sleep(2)
    assert task["status"] == "DONE", pacs_server.log_tail()
    model = requests.get(f"{pacs_server.url}/activelabel/status", timeout=30).json()["model"]
    assert model["version"] == 1
    assert model["train_count"] + model["val_count"] == 2  # the dcmqi liver SEG and the submitted one


def test_label_off_the_series_grid_is_rejected_and_nothing_stored(
    pacs_server: ServerProcess,
    loaded: OrthancConfig,
    sample_series: dict[Modality, list[ConvertedSeries]],
    tmp_path: Path,
) -> None:
    image = sample_series[Modality.CT][1].series_uid
    before = _segs(loaded)
    wrong_grid = tmp_path / "wrong.nii.gz"
    sitk.WriteImage(sitk.Image(10, 10, 10, sitk.sitkUInt8), str(wrong_grid))
    cases = {"wrong.nii.gz": wrong_grid.read_bytes(), "seg.dcm": (DCMQI / "seg_liver.dcm").read_bytes()}
    for name, content in cases.items():
        answer = requests.put(
            f"{pacs_server.url}/datastore/label",
            params={"image": image, "tag": "final"},
            files={"label": (name, content)},
            timeout=120,
        )
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"]
    assert "references series" in answer.json()["detail"]
    assert _segs(loaded) == before
    labeled = requests.get(f"{pacs_server.url}/datastore/?output=stats", timeout=30).json()["completed"]
    assert labeled == 2


def test_pacs_down_or_refusing_answers_503_or_502_and_recovers(
    pacs_server: ServerProcess, loaded: OrthancConfig
) -> None:
    sample = f"{pacs_server.url}/activelearning/random"
    stop_orthanc(loaded.data_dir)
    down = requests.post(sample, json={}, timeout=60)
    assert down.status_code == 503
    assert "unreachable" in down.json()["detail"]
    assert requests.get(f"{pacs_server.url}/info/", timeout=30).status_code == 200

    start_orthanc(OrthancConfig(loaded.data_dir, port=loaded.port, user=loaded.user, password="changed"))
    refused = requests.post(sample, json={}, timeout=60)
    assert refused.status_code == 502
    assert "credentials" in refused.json()["detail"]

    stop_orthanc(loaded.data_dir)
    start_orthanc(loaded)
    back = requests.post(sample, json={"client_id": "r2"}, timeout=120)
    assert back.status_code == 200, back.text
    assert back.json()["id"]
    assert pacs_server.process.poll() is None


def test_a_final_label_saved_while_the_pacs_is_down_is_kept_unsent_and_sent_once_it_is_back(
    pacs_server: ServerProcess,
    loaded: OrthancConfig,
    sample_series: dict[Modality, list[ConvertedSeries]],
    tmp_path: Path,
) -> None:
    series = sample_series[Modality.CT][1]
    client = MONAILabelClient(pacs_server.url, tmpdir=str(tmp_path), client_id="r3")
    prediction_file, _ = client.infer("segmentation", series.series_uid, {})  # fetches and caches the series
    prediction = sitk.GetArrayFromImage(sitk.ReadImage(prediction_file))
    before = _segs(loaded)
    stats = f"{pacs_server.url}/datastore/?output=stats"

    stop_orthanc(loaded.data_dir)
    answer = _put_final_label(pacs_server, series.series_uid, Path(prediction_file), client_id="r3")
    assert answer.status_code == 200, answer.text
    down = requests.get(stats, timeout=60).json()
    assert down["unsent_segs"] == [series.series_uid]
    assert "unreachable" in down["pacs_error"]

    start_orthanc(loaded)
    back = requests.get(stats, timeout=120).json()
    assert back["unsent_segs"] == []
    [seg_uid] = sorted(set(_segs(loaded)) - set(before))
    pacs = _client(loaded)
    [record] = [r for r in pacs.search_series(Modality="SEG") if r.series_uid == seg_uid]
    [seg] = pacs.retrieve_series(record.study_uid, seg_uid)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    read_back = seg_to_labelmap(seg, SeriesGeometry.from_datasets(_source_headers(series)), CT_LABELS)
    assert np.array_equal(read_back, prediction)
    label = requests.get(
        f"{pacs_server.url}/datastore/label", params={"label": series.series_uid, "tag": "final"}, timeout=60
    )
    assert label.status_code == 200, label.text
    stored = tmp_path / "stored.nii.gz"
    stored.write_bytes(label.content)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(stored))), prediction)
