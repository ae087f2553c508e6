"""Fuzz a running server from its own ``/openapi.json`` with schemathesis; every 5xx is collected, not raised.

In each round every operation of the document gets up to ``examples`` valid and ``examples``
invalid requests (schemathesis' positive and negative generation), drawn with the round's fixed
seed so that the same document gives the same requests, and every answer goes through
schemathesis' ``not_a_server_error`` check.  A run stops sending once ``seconds`` have passed.

Left out, so that the fuzzer cannot take the server down with it:

* the routes that start training, scoring and batch inference (minutes of CPU each);
* every non-read request naming an existing image or model (it could delete or overwrite it).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.schemas import APIOperation

EXCLUDED_PATHS = r"^/(train|scoring|batch/infer)/\{"
"""Start routes of the long tasks (``POST /train/{model}``, ``/scoring/{method}``, ``/batch/infer/{model}``)."""
READS = frozenset({"GET", "HEAD", "OPTIONS"})
SHOWN = 600
"""Characters of a request (as a curl command) and of an answer kept in a report."""


@dataclass(frozen=True)
class ServerErrorCase:
    """One request that got a 5xx (status 0: no answer): the operation, the status, the request as curl, the answer."""

    operation: str
    status: int
    request: str
    answer: str

    def __str__(self) -> str:
        return f"{self.operation}: {self.status} {self.answer[:200]!r}\n    {self.request}"


@dataclass
class FuzzReport:
    """What a run sent and found."""

    operations: list[str] = field(default_factory=list)
    cases: int = 0
    cases_by_operation: dict[str, int] = field(default_factory=dict)
    server_errors: list[ServerErrorCase] = field(default_factory=list)
    generation_errors: list[str] = field(default_factory=list)
    cut_short: list[str] = field(default_factory=list)
    rounds: int = 0
    seconds: float = 0.0

    def failing_operations(self) -> list[str]:
        """Each operation that got at least one 5xx, once, in the order found."""
        return list(dict.fromkeys(error.operation for error in self.server_errors))

    def summary(self) -> str:
        return (
            f"fuzz: {len(self.operations)} operations, {self.cases} cases "
            f"({self.rounds} rounds, {self.seconds:.0f} s), "
            f"{len(self.server_errors)} 5xx answers ({len(self.failing_operations())} operations)"
            + (f", {len(self.cut_short)} operations cut short by the time budget" if self.cut_short else "")
        )

    def as_json(self) -> dict[str, Any]:
        """The report as JSON: the counts first, then every 5xx request."""
        return {
            "operations": len(self.operations),
            "cases": self.cases,
            "server_errors": len(self.server_errors),
            "failing_operations": self.failing_operations(),
            "rounds": self.rounds,
            "seconds": round(self.seconds, 1),
            "cut_short": self.cut_short,
            "generation_errors": self.generation_errors,
            "cases_by_operation": self.cases_by_operation,
            "server_error_cases": [asdict(error) for error in self.server_errors],
        }


def protected_names(url: str, *, timeout: float = 60.0) -> frozenset[str]:
    """The ids of the server's images and the names of its models: no fuzzed write may name them."""
    info = requests.get(f"{url}/info/", timeout=timeout)
    info.raise_for_status()
    datastore = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=timeout)
    datastore.raise_for_status()
    return frozenset(info.json().get("models", {})) | frozenset(datastore.json().get("objects", {}))


def _values(case: schemathesis.Case) -> Iterable[str]:
    for part in (case.path_parameters, case.query):
        for value in (part or {}).values():
            yield from (str(item) for item in value) if isinstance(value, list | tuple) else (str(value),)


def _harmless(case: schemathesis.Case, protected: frozenset[str]) -> bool:
    return case.method.upper() in READS or not any(value in protected for value in _values(case))


@dataclass
class _Run:
    """One fuzzing run's limits and what it collected so far."""

    deadline: float
    examples: int
    timeout: float
    protected: frozenset[str]
    report: FuzzReport
    counts: Counter[str] = field(default_factory=Counter)
    session: requests.Session = field(default_factory=requests.Session)

    def send(self, label: str, case: schemathesis.Case) -> None:
        """Send ``case`` and keep it in the report when the ``not_a_server_error`` check fails (or nothing answers)."""
        if time.monotonic() >= self.deadline:
            return
        self.counts[label] += 1
        request = case.as_curl_command()[:SHOWN]
        try:
            response = case.call(session=self.session, timeout=self.timeout)
        except requests.RequestException as error:  # no answer at all: the worst server error
            self.report.server_errors.append(ServerErrorCase(label, 0, request, repr(error)))
            return
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except FailureGroup:
            self.report.server_errors.append(
                ServerErrorCase(label, response.status_code, request, response.text[:SHOWN])
            )

    def operation(self, operation: APIOperation, mode: GenerationMode, round_: int) -> None:
        """Up to ``examples`` cases of ``operation`` in ``mode``, the same ones for the same ``round_``."""
        label = operation.label
        strategy = operation.as_strategy(generation_mode=mode).filter(lambda case: _harmless(case, self.protected))

        @seed(round_)
        @settings(
            max_examples=self.examples,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: schemathesis.Case) -> None:
            self.send(label, case)

        # Nothing to negate (an operation without inputs): no invalid request exists.
        with contextlib.suppress(Unsatisfiable):
            run()


def fuzz(
    url: str,
    *,
    examples: int = 10,
    seconds: float = 60.0,
    rounds: int | None = 1,
    timeout: float = 60.0,
    modes: tuple[GenerationMode, ...] = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE),
) -> FuzzReport:
    """Fuzz the server at ``url`` in rounds, for at most ``seconds``.

    Each round sends up to ``examples`` cases per operation and mode, drawn with the round's
    seed (round 0, 1, ...: the same rounds send the same requests); ``rounds=None`` goes on
    until the time is up.  An operation a round did not reach before the time ran out is listed
    in ``cut_short`` (only for the first round: later rounds are extra).
    """
    began = time.monotonic()
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", timeout=timeout).exclude(path_regex=EXCLUDED_PATHS)
    run = _Run(began + seconds, examples, timeout, protected_names(url, timeout=timeout), FuzzReport())
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Ok):
            operations.append(result.ok())
            run.report.operations.append(result.ok().label)
        else:
            run.report.generation_errors.append(f"the document does not describe an operation: {result.err()}")
    round_ = 0
    while (rounds is None or round_ < rounds) and time.monotonic() < run.deadline:
        for operation in operations:
            for mode in modes:
                if time.monotonic() >= run.deadline:
                    if round_ == 0 and operation.label not in run.report.cut_short:
                        run.report.cut_short.append(operation.label)
                    continue
                run.operation(operation, mode, round_)
        round_ += 1
    run.report.rounds = round_
    run.report.cases = sum(run.counts.values())
    run.report.cases_by_operation = dict(run.counts)
    run.report.seconds = time.monotonic() - began
    return run.report


__all__ = ["EXCLUDED_PATHS", "FuzzReport", "ServerErrorCase", "fuzz", "protected_names"]
