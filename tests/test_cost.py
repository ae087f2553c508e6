"""The labeling cost model and ``activelabel cost``: the published example, edge fractions, the command."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from activelabel.cli import main
from activelabel.simulation.cost import (
    DEFAULT_HOURS_PER_YEAR,
    FORMULA,
    PUBLISHED_FRACTION_LABELED,
    CostModel,
    estimate,
    fraction_from_results,
)

# 250,000 images, 4 labelers at 2 minutes, 1 auditor at 10 seconds, $350/h.
PUBLISHED = {
    "images": 250_000,
    "labelers": 4,
    "label_minutes": 2.0,
    "auditors": 1,
    "audit_seconds": 10.0,
    "hourly_rate": 350.0,
}
PUBLISHED_ARGS = [
    "cost",
    "--images",
    "250000",
    "--labelers",
    "4",
    "--label-minutes",
    "2",
    "--auditors",
    "1",
    "--audit-seconds",
    "10",
    "--hourly-rate",
    "350",
]


def _cli(argv: Sequence[str]) -> int:
    return main(list(argv))


def _write_results(path: Path, fraction: object) -> Path:
    path.write_text(json.dumps({"rounds": [], "summary": {"stop_round": 3, "fraction_labeled": fraction}}))
    return path


def test_published_example_is_reproduced_at_the_stated_fraction_and_hours_per_year() -> None:
    assert DEFAULT_HOURS_PER_YEAR == 1750
    assert round(PUBLISHED_FRACTION_LABELED, 3) == 0.097
    result = estimate(CostModel(**PUBLISHED), fraction_labeled=PUBLISHED_FRACTION_LABELED)
    assert result.manual_hours == pytest.approx(250_000 * 4 * 2 / 60)
    assert result.manual_money == pytest.approx(12e6, rel=0.05)
    assert result.manual_person_years == pytest.approx(19, abs=1)
    assert result.al_money == pytest.approx(1.35e6, rel=0.05)
    assert result.al_person_years == pytest.approx(2, abs=0.5)
    assert result.automation == pytest.approx(1 - PUBLISHED_FRACTION_LABELED)


def test_audit_covers_only_auto_labeled_images() -> None:
    model = CostModel(**PUBLISHED)
    result = estimate(model, fraction_labeled=0.25)
    assert result.al_audit_hours == pytest.approx(0.75 * 250_000 * 10 / 3600)
    assert result.al_label_hours == pytest.approx(0.25 * result.manual_hours)
    assert result.al_hours == pytest.approx(result.al_label_hours + result.al_audit_hours)


def test_zero_fraction_labeled_costs_only_the_audits() -> None:
    result = estimate(CostModel(**PUBLISHED), fraction_labeled=0.0)
    assert result.al_label_hours == 0
    assert result.al_hours == pytest.approx(250_000 * 1 * 10 / 3600)
    assert result.al_money == pytest.approx(result.al_hours * 350)
    assert result.automation == 1


def test_full_fraction_labeled_costs_the_manual_labeling_and_audits_nothing() -> None:
    result = estimate(CostModel(**PUBLISHED), fraction_labeled=1.0)
    assert result.al_audit_hours == 0
    assert result.al_hours == pytest.approx(result.manual_hours)
    assert result.al_money == pytest.approx(result.manual_money)
    assert result.saved_money == pytest.approx(0)
    assert result.saved_percent == pytest.approx(0)


def test_cost_grows_with_the_fraction_labeled_when_labels_cost_more_than_audits() -> None:
    model = CostModel(**PUBLISHED)
    costs = [estimate(model, fraction_labeled=f / 20).al_money for f in range(21)]
    assert costs == sorted(costs)
    assert len(set(costs)) == len(costs)


def test_savings_are_manual_minus_active_learning() -> None:
    result = estimate(CostModel(**PUBLISHED), fraction_labeled=0.1)
    assert result.saved_hours == pytest.approx(result.manual_hours - result.al_hours)
    assert result.saved_money == pytest.approx(result.manual_money - result.al_money)
    assert result.saved_person_years == pytest.approx(result.manual_person_years - result.al_person_years)
    assert result.saved_percent == pytest.approx(100 * result.saved_hours / result.manual_hours)
    data = result.to_dict()
    assert data["model"]["images"] == 250_000
    assert data["saved_money"] == pytest.approx(result.saved_money)
    json.dumps(data)


def test_hours_per_year_scales_person_years() -> None:
    result = estimate(CostModel(**PUBLISHED, hours_per_year=2000), fraction_labeled=0.5)
    assert result.manual_person_years == pytest.approx(result.manual_hours / 2000)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("images", 0),
        ("images", -5),
        ("images", 2.5),
        ("labelers", 0),
        ("auditors", 0),
        ("label_minutes", -1.0),
        ("audit_seconds", -0.5),
        ("hourly_rate", -350.0),
        ("hours_per_year", 0.0),
        ("label_minutes", float("nan")),
    ],
)
def test_invalid_model_field_is_rejected_by_name(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        CostModel(**{**PUBLISHED, field: value})


@pytest.mark.parametrize("fraction", [-0.01, 1.01, float("nan")])
def test_fraction_outside_zero_to_one_is_rejected(fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction_labeled"):
        estimate(CostModel(**PUBLISHED), fraction_labeled=fraction)


def test_fraction_from_results_reads_the_summary(tmp_path: Path) -> None:
    assert fraction_from_results(_write_results(tmp_path / "results.json", 0.25)) == 0.25


def test_fraction_from_results_rejects_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="results file not found"):
        fraction_from_results(tmp_path / "absent.json")


def test_fraction_from_results_rejects_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        fraction_from_results(path)


@pytest.mark.parametrize("content", [[1, 2], {"rounds": []}, {"summary": {"stop_round": 1}}, {"summary": 0.3}])
def test_fraction_from_results_rejects_a_file_without_the_key(tmp_path: Path, content: object) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"no summary\.fraction_labeled"):
        fraction_from_results(path)


@pytest.mark.parametrize("value", [1.5, -0.1, "0.3", None, True])
def test_fraction_from_results_rejects_an_invalid_value(tmp_path: Path, value: object) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        fraction_from_results(_write_results(tmp_path / "results.json", value))


def test_cost_command_prints_the_table_and_formula(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli([*PUBLISHED_ARGS, "--fraction-labeled", str(PUBLISHED_FRACTION_LABELED)]) == 0
    out = capsys.readouterr().out
    for text in ("Manual", "Active learning", "Savings", "33,333", "19.0", "$11,666,667", "3,860", "2.2"):
        assert text in out
    assert "$1,351,146" in out
    assert "9.7% labeled by hand" in out
    assert FORMULA.splitlines()[0] in out
    assert "only those auto-labels are audited" in out


def test_cost_command_json_parses(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli([*PUBLISHED_ARGS, "--fraction-labeled", "0.1", "--hours-per-year", "2000", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fraction_labeled"] == 0.1
    assert data["model"]["hours_per_year"] == 2000
    assert data["manual_money"] == pytest.approx(250_000 * 4 * 2 / 60 * 350)


def test_cost_command_negative_images_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["cost", "--images", "-5", *PUBLISHED_ARGS[3:], "--fraction-labeled", "0.1"]
    assert _cli(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert "images" in lines[0]


def test_cost_command_bad_results_file_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli([*PUBLISHED_ARGS, "--from-results", str(tmp_path / "absent.json")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: results file not found")


def test_cost_command_takes_the_fraction_from_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_results(tmp_path / "results.json", 0.2)
    assert _cli([*PUBLISHED_ARGS, "--from-results", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fraction_labeled"] == 0.2
    assert data["al_hours"] == pytest.approx(0.2 * 250_000 * 4 * 2 / 60 + 0.8 * 250_000 * 10 / 3600)
    assert _cli([*PUBLISHED_ARGS, "--from-results", str(path)]) == 0
    assert f"(from {path})" in capsys.readouterr().out


def test_cost_command_needs_exactly_one_fraction_source(tmp_path: Path) -> None:
    path = _write_results(tmp_path / "results.json", 0.2)
    with pytest.raises(SystemExit):
        _cli(PUBLISHED_ARGS)
    with pytest.raises(SystemExit):
        _cli([*PUBLISHED_ARGS, "--fraction-labeled", "0.1", "--from-results", str(path)])


def test_results_with_triage_effort_give_the_hand_labeled_fraction_including_send_backs(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    summary = {"stop_round": 3, "fraction_labeled": 0.1, "effort_fraction_labeled": 0.16}
    path.write_text(json.dumps({"rounds": [], "summary": summary}))
    assert fraction_from_results(path) == pytest.approx(0.16)
    assert fraction_from_results(_write_results(tmp_path / "plain.json", 0.1)) == pytest.approx(0.1)
