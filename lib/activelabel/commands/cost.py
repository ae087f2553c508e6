"""``activelabel cost``: what labeling by hand costs against active learning with audited auto-labels."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from activelabel.simulation.cost import (
    DEFAULT_HOURS_PER_YEAR,
    FORMULA,
    PUBLISHED_FRACTION_LABELED,
    CostEstimate,
    CostModel,
    estimate,
    fraction_from_results,
)


def _money(value: float) -> str:
    return f"-${-value:,.0f}" if value < 0 else f"${value:,.0f}"


def format_table(result: CostEstimate, *, source: str | None = None) -> str:
    """A readable table of ``result``: manual against active learning, the savings and the formula.

    Args:
        result: The estimate to show.
        source: Where the fraction came from (a results file), if not given directly.

    Returns:
        The table as text, without a trailing newline.
    """
    m = result.model
    fraction = f"{result.fraction_labeled:.1%} labeled by hand, {result.automation:.1%} auto-labeled and audited"
    saved = f"({result.saved_percent:.1f}%)"
    rows = [
        ("Manual", result.manual_hours, result.manual_person_years, result.manual_money, ""),
        ("Active learning", result.al_hours, result.al_person_years, result.al_money, ""),
        ("Savings", result.saved_hours, result.saved_person_years, result.saved_money, saved),
    ]
    lines = [
        f"Labeling cost: {m.images:,} images, {m.labelers} labeler(s) x {m.label_minutes:g} min, "
        f"{m.auditors} auditor(s) x {m.audit_seconds:g} s, {_money(m.hourly_rate)}/h, "
        f"{m.hours_per_year:,.0f} h per person-year",
        f"Fraction: {fraction}" + (f" (from {source})" if source else ""),
        "",
        f"{'':<16}{'hours':>12}{'person-years':>15}{'money':>16}",
    ]
    lines += [f"{name:<16}{h:>12,.0f}{py:>15.1f}{_money(c):>16}  {extra}".rstrip() for name, h, py, c, extra in rows]
    lines += [
        f"  (active learning: {result.al_label_hours:,.0f} h labeling + {result.al_audit_hours:,.0f} h auditing)",
        "",
        "Formula:",
        *(f"  {line}" for line in FORMULA.splitlines()),
    ]
    return "\n".join(lines)


def run_cost(args: argparse.Namespace) -> int:
    """Print the estimate for ``args`` (a table, or JSON with ``--json``); 2 on bad input."""
    model = CostModel(
        images=args.images,
        labelers=args.labelers,
        label_minutes=args.label_minutes,
        auditors=args.auditors,
        audit_seconds=args.audit_seconds,
        hourly_rate=args.hourly_rate,
        hours_per_year=args.hours_per_year,
    )
    source = str(args.from_results) if args.from_results is not None else None
    fraction = fraction_from_results(args.from_results) if source else args.fraction_labeled
    result = estimate(model, fraction_labeled=fraction)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_table(result, source=source))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``cost`` to the ``activelabel`` command line."""
    parser = subparsers.add_parser(
        "cost",
        help="labeling cost by hand against active learning with audited auto-labels",
        description="What labeling by hand costs against active learning with audited auto-labels.",
        epilog=f"Formula:\n{FORMULA}\n\nThe published example (250,000 images, 4 labelers x 2 min, "
        f"1 auditor x 10 s, $350/h) uses --fraction-labeled {PUBLISHED_FRACTION_LABELED}.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--images", type=int, required=True, metavar="N", help="images to label")
    parser.add_argument("--labelers", type=int, required=True, metavar="L", help="people labeling each image")
    parser.add_argument("--label-minutes", type=float, required=True, metavar="M", help="minutes per hand label")
    parser.add_argument("--auditors", type=int, required=True, metavar="A", help="people checking each auto-label")
    parser.add_argument("--audit-seconds", type=float, required=True, metavar="S", help="seconds per audit")
    parser.add_argument("--hourly-rate", type=float, required=True, metavar="R", help="money per person-hour")
    fraction = parser.add_mutually_exclusive_group(required=True)
    fraction.add_argument(
        "--fraction-labeled", type=float, metavar="F", help="fraction of the images labeled by hand, 0 to 1"
    )
    fraction.add_argument(
        "--from-results",
        type=Path,
        metavar="FILE.json",
        help="take the fraction from an 'activelabel simulate' results file (summary.fraction_labeled)",
    )
    parser.add_argument(
        "--hours-per-year",
        type=float,
        default=DEFAULT_HOURS_PER_YEAR,
        metavar="H",
        help=f"working hours per person-year (default: {DEFAULT_HOURS_PER_YEAR:g})",
    )
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON instead of a table")
    parser.set_defaults(func=run_cost)
