"""The access matrix: every operation of the OpenAPI document, called by every kind of caller, answers as POLICY says.

One server with access control and one user per role is walked once: each (path, method) of
its ``/openapi.json`` is sent without credentials and as an annotator, a reviewer and an
admin.  A caller the policy refuses must get the guard's 401 (no credentials) or 403 (too low
a role); a caller it allows must get past the guard (any answer but 401/403: placeholder ids
may well be 404 or 422).  Routes no rule names fall through to admin, so a route added later
without a rule fails here as soon as a non-admin can reach it.

Placeholders name nothing that exists, so deletes and uploads cannot touch the datastore, and the
training, scoring and batch-infer tasks an admin's POST submits name an unknown model or method
(the DELETEs of /train, /scoring and /batch/infer at the end stop them).  Reads come first and
deletes last.  5xx answers do not fail the matrix (a handler's bug, not an access one) but are
reported as a warning.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from activelabel.access.policy import ANY, POLICY, Role, allowed, required_role
from activelabel.cli import main
from activelabel.testing.server_process import ServerProcess
from tests.conftest import ServerFactory

IDENTITIES: tuple[Role | None, ...] = (None, Role.ANNOTATOR, Role.REVIEWER, Role.ADMIN)
"""Who calls each operation: nobody (no credentials), then each role from least to most."""
METHOD_ORDER = {"GET": 0, "HEAD": 0, "POST": 1, "PUT": 1, "PATCH": 1, "DELETE": 2}
"""Reads first, deletes last: nothing earlier in the walk depends on what a later call might remove."""
GUARD_STATUSES = (401, 403)


def _name(identity: Role | None) -> str:
    return identity.value if identity is not None else "anonymous"


@dataclass(frozen=True)
class Operation:
    """One (method, path) of the OpenAPI document, with the placeholder request the walk sends for it."""

    method: str
    template: str
    path: str
    query: Mapping[str, str] = field(hash=False)

    def __str__(self) -> str:
        return f"{self.method} {self.template}"

    @property
    def needed(self) -> Role | None:
        """The least role POLICY asks for this very request (``None``: public)."""
        return required_role(self.method, self.path, self.query)

    @property
    def has_rule(self) -> bool:
        """Whether a POLICY rule names this request (otherwise it falls through to admin)."""
        normalized = self.path.rstrip("/")
        return any(rule.matches(self.method, normalized, self.query) for rule in POLICY)


@dataclass(frozen=True)
class Outcome:
    """What one caller got for one operation, and whether that is what the policy says."""

    operation: Operation
    identity: Role | None
    status: int
    detail: str

    @property
    def refused(self) -> bool:
        needed = self.operation.needed
        return needed is not None and (self.identity is None or not allowed(self.identity, needed))

    @property
    def expected(self) -> str:
        if not self.refused:
            return "not 401/403"
        return "401" if self.identity is None else "403"

    @property
    def as_policy_says(self) -> bool:
        if not self.refused:
            return self.status not in GUARD_STATUSES
        if self.identity is None:
            return self.status == 401
        needed = self.operation.needed
        assert needed is not None
        # The 403 must be the guard's (a HEAD answer has no body to tell).
        by_guard = self.operation.method == "HEAD" or self.detail.endswith(f"it needs the {needed.value} role")
        return self.status == 403 and by_guard

    def __str__(self) -> str:
        query = "&".join(f"{key}={value}" for key, value in self.operation.query.items())
        request = f"{self.operation.method} {self.operation.path}" + (f"?{query}" if query else "")
        needed = self.operation.needed
        return (
            f"{request} as {_name(self.identity)} (needs {needed.value if needed else 'nothing'}): "
            f"expected {self.expected}, got {self.status} {self.detail[:120]}"
        )


@dataclass(frozen=True)
class Walk:
    """Every operation of the document and what each identity got for it."""

    operations: tuple[Operation, ...]
    outcomes: tuple[Outcome, ...]


def _placeholder(parameter: Mapping[str, object]) -> str:
    """A value of the parameter's type that names nothing on the server."""
    schema = parameter.get("schema", {})
    assert isinstance(schema, Mapping)
    kinds = {option.get("type") for option in schema.get("anyOf", [schema]) if isinstance(option, Mapping)}
    if "integer" in kinds or "number" in kinds:
        return "999999"
    if "boolean" in kinds:
        return "false"
    return f"no-such-{parameter['name']}".replace("_", "-")


def operations_of(document: Mapping[str, object]) -> list[Operation]:
    """Each (method, path) of an OpenAPI document as a request: path and required query parameters filled in."""
    paths = document["paths"]
    assert isinstance(paths, Mapping)
    found = []
    for template, methods in paths.items():
        for method, spec in methods.items():
            if method.upper() not in ANY:
                continue
            path, query = template, {}
            for parameter in spec.get("parameters", []):
                if parameter["in"] == "path":
                    path = path.replace("{" + parameter["name"] + "}", _placeholder(parameter))
                elif parameter["in"] == "query" and parameter.get("required"):
                    query[parameter["name"]] = _placeholder(parameter)
            found.append(Operation(method.upper(), template, path, query))
    return sorted(found, key=lambda op: (METHOD_ORDER.get(op.method, 1), op.template, op.method))


def _add_user(users: Path, name: str, role: Role) -> str:
    """Add a user with ``activelabel users add`` and return the token it prints once."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["users", "add", name, "--role", role.value, "--file", str(users)]) == 0
    return printed.getvalue().strip()


@pytest.fixture(scope="module")
def guarded(server_factory: ServerFactory) -> tuple[ServerProcess, dict[Role, str]]:
    """A loopback server with access control on and one user per role; the tokens by role."""
    studies = server_factory.phantoms("matrix", count=3, seed=0, labeled=1)
    users = studies.parent / "users.json"
    tokens = {role: _add_user(users, f"{role.value}-1", role) for role in Role}
    return server_factory.start(studies, conf={"users_file": str(users)}), tokens


def _call(server: ServerProcess, operation: Operation, token: str | None) -> tuple[int, str]:
    """Send ``operation`` with ``token`` (none: no credentials), no body; its status and error detail."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.request(
        operation.method, server.url + operation.path, params=operation.query, headers=headers, timeout=120
    )
    detail = ""
    if response.content:
        try:
            body = response.json()
        except ValueError:
            body = response.text
        detail = str(body.get("detail", body)) if isinstance(body, dict) else str(body)
    return response.status_code, detail


@pytest.fixture(scope="module")
def walk(guarded: tuple[ServerProcess, dict[Role, str]]) -> Walk:
    """Call every operation of the server's OpenAPI document as every identity, once, in walk order."""
    server, tokens = guarded
    document = requests.get(f"{server.url}/openapi.json", timeout=60)
    assert document.status_code == 200, document.text
    operations = operations_of(document.json())
    outcomes = []
    for operation in operations:
        for identity in IDENTITIES:
            status, detail = _call(server, operation, tokens[identity] if identity is not None else None)
            outcomes.append(Outcome(operation, identity, status, detail))
    errors = [str(outcome) for outcome in outcomes if outcome.status >= 500]
    if errors:
        warnings.warn(f"{len(errors)} answers were 5xx:\n" + "\n".join(errors), stacklevel=1)
    return Walk(tuple(operations), tuple(outcomes))


# ---------------------------------------------------------------- the policy alone


@pytest.mark.parametrize("method", sorted(ANY - {"OPTIONS"}))
def test_a_route_no_rule_names_is_admin_only(method: str) -> None:
    path = "/made-up/route/nobody/wrote/a/rule/for"
    assert not any(rule.matches(method, path, {}) for rule in POLICY)
    assert required_role(method, path) is Role.ADMIN
    assert [role for role in Role if allowed(role, required_role(method, path))] == [Role.ADMIN]


def test_placeholders_fill_path_and_required_query_parameters() -> None:
    document = {
        "paths": {
            "/things/{thing_id}/versions/{version}": {
                "get": {
                    "parameters": [
                        {"name": "thing_id", "in": "path", "required": True, "schema": {"type": "string"}},
                        {"name": "version", "in": "path", "required": True, "schema": {"type": "integer"}},
                        {"name": "tag", "in": "query", "required": True, "schema": {"type": "string"}},
                        {"name": "token", "in": "query", "schema": {"type": "string"}},
                    ]
                }
            },
            "/things": {"delete": {}, "put": {}},
        }
    }
    assert [(op.method, op.path, dict(op.query)) for op in operations_of(document)] == [
        ("GET", "/things/no-such-thing-id/versions/999999", {"tag": "no-such-tag"}),
        ("PUT", "/things", {}),
        ("DELETE", "/things", {}),
    ]


# ---------------------------------------------------------------- the server, walked


def test_every_operation_answers_every_caller_as_the_policy_says(walk: Walk) -> None:
    wrong = [str(outcome) for outcome in walk.outcomes if not outcome.as_policy_says]
    assert not wrong, f"{len(wrong)} of {len(walk.outcomes)} answers differ from POLICY:\n" + "\n".join(wrong)


def test_operations_without_a_rule_refuse_everyone_but_admins(walk: Walk) -> None:
    unnamed = {outcome.operation for outcome in walk.outcomes if not outcome.operation.has_rule}
    assert unnamed, "no operation falls through to the default: the check below would prove nothing"
    reached = [
        str(outcome)
        for outcome in walk.outcomes
        if outcome.operation in unnamed and outcome.identity is not Role.ADMIN and outcome.status not in GUARD_STATUSES
    ]
    assert not reached, "routes without a POLICY rule that a non-admin reached:\n" + "\n".join(reached)
    assert all(operation.needed is Role.ADMIN for operation in unnamed)


def test_the_walk_covers_every_operation_as_every_identity(walk: Walk, capsys: pytest.CaptureFixture[str]) -> None:
    assert len(walk.operations) > 0
    assert len(walk.outcomes) == len(walk.operations) * len(IDENTITIES)
    assert {(o.operation, o.identity) for o in walk.outcomes} == {
        (op, identity) for op in walk.operations for identity in IDENTITIES
    }
    refused = sum(outcome.refused for outcome in walk.outcomes)
    with capsys.disabled():
        print(
            f"\naccess matrix: {len(walk.operations)} operations x {len(IDENTITIES)} identities = "
            f"{len(walk.outcomes)} requests ({refused} refused, {len(walk.outcomes) - refused} allowed)"
        )
