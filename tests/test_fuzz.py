"""Schemathesis against one real server: no operation answers generated input, valid or not, with a 5xx.

Every operation of the server's ``/openapi.json`` (but the training, scoring and batch-infer
starts) gets a bounded number of derandomized valid and invalid requests, each checked with
schemathesis' ``not_a_server_error``; the test fails listing every operation and request that got
a 5xx.  ``ACTIVELABEL_FUZZ_EXAMPLES`` (cases per operation and mode, default 10) and
``ACTIVELABEL_FUZZ_SECONDS`` (the whole run's budget, default 60) make the run longer; ``make
bench`` runs bench/fuzz.py for minutes.  The routes the fuzzer first found answering 5xx are
pinned below with the 4xx and reason they answer now.
"""

from __future__ import annotations

import os

import pytest
import requests
from fastapi import HTTPException
from monailabel.interfaces.exception import (
    ImageNotFoundException,
    LabelNotFoundException,
    MONAILabelError,
    MONAILabelException,
)

from activelabel.server.monailabel_errors import check_json_object, status_of
from activelabel.testing.fuzz import FuzzReport, fuzz, protected_names
from activelabel.testing.server_process import ServerProcess
from tests.conftest import ServerFactory

EXAMPLES = int(os.environ.get("ACTIVELABEL_FUZZ_EXAMPLES", "10"))
SECONDS = float(os.environ.get("ACTIVELABEL_FUZZ_SECONDS", "60"))


@pytest.fixture(scope="module")
def fuzzed(server_factory: ServerFactory) -> ServerProcess:
    """A server on three CT phantoms, one labeled."""
    return server_factory.start(server_factory.phantoms("fuzz", count=3, seed=0, labeled=1))


@pytest.fixture(scope="module")
def before(fuzzed: ServerProcess) -> frozenset[str]:
    """The server's image ids and model names before any fuzzing."""
    return protected_names(fuzzed.url)


@pytest.fixture(scope="module")
def report(fuzzed: ServerProcess, before: frozenset[str]) -> FuzzReport:
    return fuzz(fuzzed.url, examples=EXAMPLES, seconds=SECONDS)


# ---------------------------------------------------------------- the mapping alone


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ImageNotFoundException("Image ct_999 not found"), 404),
        (LabelNotFoundException("Label: ct_999 Tag: final not found"), 404),
        (MONAILabelException(MONAILabelError.INVALID_INPUT, "no strategy named 'x'"), 422),
        (MONAILabelException(MONAILabelError.INFERENCE_ERROR, "the network failed"), 500),
        (MONAILabelException(MONAILabelError.SERVER_ERROR, "broken"), 500),
    ],
    ids=["image-not-found", "label-not-found", "invalid-input", "inference-error", "server-error"],
)
def test_monailabel_errors_map_to_the_callers_4xx_or_stay_500(error: MONAILabelException, status: int) -> None:
    assert status_of(error) == status


@pytest.mark.parametrize("value", ["", None, "{}", '{"a": [1, 2]}'])
def test_an_empty_or_object_json_form_field_is_accepted(value: str | None) -> None:
    check_json_object("params", value)


@pytest.mark.parametrize("value", ["5", "[1]", "null", "{", "not json"])
def test_a_json_form_field_that_is_not_an_object_is_refused_naming_the_field(value: str) -> None:
    with pytest.raises(HTTPException, match="form field 'params' must be a JSON object, got") as raised:
        check_json_object("params", value)
    assert raised.value.status_code == 422


# ---------------------------------------------------------------- the routes the fuzzer found


CASES = [
    ("unknown-strategy", "POST", "/activelearning/no-such-strategy", {}, None, 422, "no strategy named"),
    ("infer-without-image", "POST", "/infer/segmentation", {}, {}, 422, "no image to run on"),
    ("wsi-infer-without-image", "POST", "/infer/wsi_v2/segmentation", {}, {}, 422, "no image to run on"),
    ("infer-params-not-json", "POST", "/infer/segmentation", {"image": "ct_000"}, {"params": "5"}, 422, "'params'"),
    ("wsi-not-a-region", "POST", "/infer/wsi_v2/x", {"image": "ct_000"}, {"wsi": '{"level": "a"}'}, 422, "'wsi'"),
    ("label-info-unknown", "PUT", "/datastore/label/info", {"label": "ct_999", "tag": "final"}, {}, 404, "ct_999"),
    ("image-info-unknown", "PUT", "/datastore/image/info", {"image": "ct_999"}, {}, 404, "ct_999"),
    ("image-info-not-json", "PUT", "/datastore/image/info", {"image": "ct_000"}, {"info": "[]"}, 422, "'info'"),
    ("delete-unknown-image", "DELETE", "/datastore/image", {"id": "ct_999"}, None, 404, "ct_999"),
    ("weights-for-unknown-model", "PUT", "/model/no-such-model", {}, "file", 404, "no-such-model"),
    ("session-not-an-archive", "PUT", "/session/", {"uncompress": "true"}, "files", 422, "archive"),
    ("image-params-not-json", "PUT", "/datastore/image", {}, "file+params", 422, "'params'"),
    ("log-lines-past-any-int", "GET", "/logs/", {"lines": "139885717467066023936"}, None, 422, "'lines'"),
    ("label-params-not-json", "PUT", "/datastore/label", {"image": "ct_001"}, "label+params", 422, "'params'"),
]


def _send(server: ServerProcess, method: str, path: str, query: dict[str, str], body: object) -> requests.Response:
    """One request; ``body`` None: none, a dict: form fields, a string: those file fields (``+params``: bad params)."""
    url = server.url + path
    if isinstance(body, str):
        names, _, extra = body.partition("+")
        files = {name: (f"{name}.bin", b"not an image") for name in names.split(",")}
        data = {extra: "not json"} if extra else None
        return requests.request(method, url, params=query, files=files, data=data, timeout=120)
    if isinstance(body, dict):
        return requests.request(method, url, params=query, files={k: (None, v) for k, v in body.items()}, timeout=120)
    return requests.request(method, url, params=query, timeout=120)


@pytest.mark.parametrize(
    ("method", "path", "query", "body", "status", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_to_monailabel_routes_gets_a_4xx_with_a_reason(
    fuzzed: ServerProcess,
    method: str,
    path: str,
    query: dict[str, str],
    body: object,
    status: int,
    reason: str,
) -> None:
    answer = _send(fuzzed, method, path, query, body)
    assert answer.status_code == status, answer.text[:500]
    assert reason in answer.json()["detail"], answer.text[:500]


def test_gpu_info_without_a_gpu_explains_instead_of_failing(fuzzed: ServerProcess) -> None:
    answer = requests.get(f"{fuzzed.url}/logs/gpu", timeout=60)
    assert answer.status_code == 200, answer.text[:500]
    assert answer.text.strip()


def test_the_schema_declares_json_form_fields_and_no_unread_token_parameter(fuzzed: ServerProcess) -> None:
    document = requests.get(f"{fuzzed.url}/openapi.json", timeout=60).json()
    tokens = [
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if any(p["name"] == "token" for p in operation.get("parameters", []))
    ]
    assert not tokens, f"operations still declaring the unread 'token' query parameter: {tokens}"
    bodies = document["components"]["schemas"]
    params = bodies["Body_api_run_inference_infer__model__post"]["properties"]["params"]
    assert params["contentMediaType"] == "application/json"
    assert params["contentSchema"] == {"type": "object"}
    wsi = bodies["Body_api_run_wsi_v2_inference_infer_wsi_v2__model__post"]["properties"]["wsi"]
    assert "tile_size" in wsi["contentSchema"]["properties"]
    lines = next(p for p in document["paths"]["/logs/"]["get"]["parameters"] if p["name"] == "lines")
    assert {"minimum": -1_000_000, "maximum": 1_000_000}.items() <= lines["schema"]["anyOf"][0].items()


# ---------------------------------------------------------------- the fuzzer


def test_no_operation_answers_fuzzed_input_with_a_server_error(
    report: FuzzReport, capsys: pytest.CaptureFixture[str]
) -> None:
    with capsys.disabled():
        print(f"\n{report.summary()}")
    assert not report.generation_errors, "\n".join(report.generation_errors)
    listed = "\n".join(str(error) for error in report.server_errors)
    assert not report.server_errors, (
        f"{len(report.server_errors)} 5xx answers on {report.failing_operations()}:\n{listed}"
    )


def test_the_fuzzer_sends_cases_to_every_operation_but_the_task_starts(
    fuzzed: ServerProcess, report: FuzzReport
) -> None:
    document = requests.get(f"{fuzzed.url}/openapi.json", timeout=60).json()
    every = {f"{method.upper()} {path}" for path, operations in document["paths"].items() for method in operations}
    starts = {"POST /train/{model}", "POST /scoring/{method}", "POST /batch/infer/{model}"}
    assert set(report.operations) == every - starts
    assert not report.cut_short, f"the {SECONDS:.0f} s budget ran out before {report.cut_short}"
    assert set(report.cases_by_operation) == set(report.operations)


def test_the_server_keeps_its_images_and_models_through_the_fuzzing(
    fuzzed: ServerProcess, before: frozenset[str], report: FuzzReport
) -> None:
    assert requests.get(f"{fuzzed.url}/info/", timeout=60).status_code == 200
    assert before <= protected_names(fuzzed.url)
