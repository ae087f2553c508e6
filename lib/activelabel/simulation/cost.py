"""The labeling cost model: manual labeling against active learning with audited auto-labels.

Manual labeling: every image is labeled by ``labelers`` people, each taking ``label_minutes``.
With active learning a fraction ``f`` (``fraction_labeled``) of the images is labeled that way;
the model labels the other ``1 - f`` and ``auditors`` people check each auto-label for
``audit_seconds``. Only auto-labels are audited: hand labels need no check, they are the
reference. Money is hours times ``hourly_rate``; person-years are hours over ``hours_per_year``.

The published example (250,000 images, 4 labelers at 2 minutes, 1 auditor at 10 seconds,
$350/h) comes out as follows:

* manual: 250,000 x 4 x 2 / 60 = 33,333 h -> $11.67m (about $12m); at the default
  ``hours_per_year`` of 1,750 working hours that is 19.0 person-years (about 19);
* active learning at ``f = 0.097`` (:data:`PUBLISHED_FRACTION_LABELED`, about 10% labeled by hand):
  0.097 x 33,333 h + 0.903 x 694 h = 3,233 h + 627 h = 3,860 h -> $1.35m, 2.2 person-years
  (about 2). A round 10% gives 3,958 h -> $1.39m, 2.3 person-years.

Auditing every image instead (hand labels too) would need ``f = 0.095`` for the same $1.35m;
that reading is not used because auditors check auto-labels.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from activelabel.errors import ConfigError

#: Working hours in one person-year; 33,333 h / 1,750 h = 19 person-years as published.
DEFAULT_HOURS_PER_YEAR = 1750.0

#: The fraction labeled by hand that reproduces the published active-learning cost ($1.35m).
PUBLISHED_FRACTION_LABELED = 0.097

FORMULA = """\
manual hours = images * labelers * label_minutes / 60
AL hours     = f * images * labelers * label_minutes / 60
             + (1 - f) * images * auditors * audit_seconds / 3600
money        = hours * hourly_rate
person-years = hours / hours_per_year
f = fraction of the images labeled by hand; the model labels the other 1 - f,
and only those auto-labels are audited."""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class CostModel:
    """The labeling job and what its people cost.

    Attributes:
        images: Images to label.
        labelers: People labeling each image by hand.
        label_minutes: Minutes one labeler takes for one image.
        auditors: People checking each auto-labeled image.
        audit_seconds: Seconds one auditor takes for one auto-label.
        hourly_rate: Money per person-hour.
        hours_per_year: Working hours in one person-year.
    """

    images: int
    labelers: int
    label_minutes: float
    auditors: int
    audit_seconds: float
    hourly_rate: float
    hours_per_year: float = DEFAULT_HOURS_PER_YEAR

    def __post_init__(self) -> None:
        for name in ("images", "labelers", "auditors"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive whole number, got {value!r}")
        for name in ("label_minutes", "audit_seconds", "hourly_rate"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ConfigError(f"{name} must be a non-negative number, got {value!r}")
        if not _is_number(self.hours_per_year) or self.hours_per_year <= 0:
            raise ConfigError(f"hours_per_year must be a positive number, got {self.hours_per_year!r}")

    @property
    def label_hours(self) -> float:
        """Hours to label every image by hand."""
        return self.images * self.labelers * self.label_minutes / 60

    @property
    def audit_hours(self) -> float:
        """Hours to audit every image, were all of them auto-labeled."""
        return self.images * self.auditors * self.audit_seconds / 3600


@dataclass(frozen=True)
class CostEstimate:
    """Manual labeling against active learning for one :class:`CostModel` and fraction.

    ``saved_percent`` is the share of the manual hours saved (0 when manual labeling takes no time).
    """

    model: CostModel
    fraction_labeled: float
    automation: float
    manual_hours: float
    manual_money: float
    manual_person_years: float
    al_label_hours: float
    al_audit_hours: float
    al_hours: float
    al_money: float
    al_person_years: float
    saved_hours: float
    saved_money: float
    saved_person_years: float
    saved_percent: float

    def to_dict(self) -> dict[str, Any]:
        """The estimate as plain JSON-ready data, with the model's inputs under ``model``."""
        return asdict(self)


def estimate(model: CostModel, *, fraction_labeled: float) -> CostEstimate:
    """Cost of labeling by hand against active learning with ``fraction_labeled`` labeled by hand.

    Args:
        model: The labeling job.
        fraction_labeled: Fraction of the images labeled by hand, in [0, 1].

    Returns:
        Hours, money and person-years both ways, and the savings.

    Raises:
        ConfigError: If ``fraction_labeled`` is not a number in [0, 1].
    """
    if not _is_number(fraction_labeled) or not 0 <= fraction_labeled <= 1:
        raise ConfigError(f"fraction_labeled must be a number between 0 and 1, got {fraction_labeled!r}")
    f = float(fraction_labeled)
    manual = model.label_hours
    label_hours = f * model.label_hours
    audit_hours = (1 - f) * model.audit_hours
    al = label_hours + audit_hours
    saved = manual - al
    return CostEstimate(
        model=model,
        fraction_labeled=f,
        automation=1 - f,
        manual_hours=manual,
        manual_money=manual * model.hourly_rate,
        manual_person_years=manual / model.hours_per_year,
        al_label_hours=label_hours,
        al_audit_hours=audit_hours,
        al_hours=al,
        al_money=al * model.hourly_rate,
        al_person_years=al / model.hours_per_year,
        saved_hours=saved,
        saved_money=saved * model.hourly_rate,
        saved_person_years=saved / model.hours_per_year,
        saved_percent=100 * saved / manual if manual > 0 else 0.0,
    )


def fraction_from_results(path: Path) -> float:
    """The fraction labeled by hand recorded in a simulator results JSON.

    Args:
        path: Results file written by ``activelabel simulate``.

    Returns:
        ``results["summary"]["effort_fraction_labeled"]`` when present (every volume an expert
        labels by hand: those the strategy chose, those triage sent back and those that failed
        their audit), else ``results["summary"]["fraction_labeled"]``; a float in [0, 1].

    Raises:
        ConfigError: If the file is missing or unreadable, or the value is absent or invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"results file not found: {path}")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read results file {path}: {error}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"results file {path} is not valid JSON: {error}") from None
    summary = results.get("summary") if isinstance(results, dict) else None
    if not isinstance(summary, dict) or "fraction_labeled" not in summary:
        raise ConfigError(
            f"results file {path} has no summary.fraction_labeled (expected 'activelabel simulate' output)"
        )
    value = summary.get("effort_fraction_labeled")
    value = summary["fraction_labeled"] if value is None else value
    if not _is_number(value) or not 0 <= value <= 1:
        raise ConfigError(f"summary.fraction_labeled in {path} must be a number between 0 and 1, got {value!r}")
    return float(value)
