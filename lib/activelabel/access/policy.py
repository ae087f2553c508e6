"""Who may call which route: roles and the route -> least role table.

Pure logic, no HTTP: the request guard asks :func:`required_role` for a request's method,
path and query, then :func:`allowed` with the caller's role.  Rules are tried top to bottom
and the first match wins; a route that no rule names needs ``admin`` (closed by default).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum


class Role(str, Enum):
    """What a user may do; each role may do everything the roles before it may."""

    ANNOTATOR = "annotator"
    REVIEWER = "reviewer"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)


PUBLIC = None
"""A rule's role for routes anyone may call without credentials (API docs, CORS preflight)."""

ANY = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
READ = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Rule:
    """Requests with one of ``methods`` whose path matches ``path`` need ``role``.

    ``path`` is a regular expression matched against the whole path without trailing slash;
    ``query`` narrows the rule to requests whose query holds these exact values.
    """

    methods: frozenset[str]
    path: str
    role: Role | None
    query: Mapping[str, str] = field(default_factory=dict)

    def matches(self, method: str, path: str, query: Mapping[str, str]) -> bool:
        if method not in self.methods or not re.fullmatch(self.path, path):
            return False
        return all(query.get(key) == value for key, value in self.query.items())


_A, _R, _ADMIN = Role.ANNOTATOR, Role.REVIEWER, Role.ADMIN

POLICY: tuple[Rule, ...] = (
    # Docs and CORS preflight carry no credentials.
    Rule(frozenset({"OPTIONS"}), r".*", PUBLIC),
    Rule(READ, r"|/docs|/openapi\.json|/favicon\.ico|/static/.*", PUBLIC),
    # Reading: app info, status, images, labels, task progress, viewer.
    Rule(READ, r"/info", _A),
    Rule(READ, r"/activelabel/audit(/.*)?", _R),
    Rule(READ, r"/activelabel/.*", _A),
    Rule(READ, r"/datastore", _A),
    Rule(READ, r"/datastore/(image|label)(/info)?", _A),
    Rule(READ, r"/(train|scoring|batch/infer)", _A),
    Rule(READ, r"/ohif(/.*)?|/proxy/dicom/(wado|qido)/.*", _A),
    # Labeling: next sample, pre-segmentation, submit, skip.
    Rule(frozenset({"POST"}), r"/activelearning/audit", _R),
    Rule(frozenset({"POST"}), r"/activelearning/[^/]+", _R, query={"strategy": "audit"}),
    Rule(frozenset({"POST"}), r"/activelearning/[^/]+", _A),
    Rule(frozenset({"POST"}), r"/infer/.+", _A),
    Rule(frozenset({"PUT"}), r"/datastore/label", _A),
    # The viewer's "Export DICOM SEG" (STOW-RS): a SEG becomes a label; other instances need admin there.
    Rule(frozenset({"POST"}), r"/proxy/dicom/(wado|stow)/studies(/[^/]+)?", _A),
    Rule(frozenset({"POST"}), r"/activelabel/skip", _A),
    Rule(frozenset({"GET", "PUT", "DELETE"}), r"/session(/.*)?", _A),
    # Review: audits and label metadata.
    Rule(ANY, r"/activelabel/audit(/.*)?", _R),
    Rule(frozenset({"PUT"}), r"/datastore/(label/info|updatelabelinfo)", _R),
    # Everything else (training, scoring, batch jobs, deletes, image and model uploads, logs,
    # dataset export, DICOM store, reload) falls through to admin.
)


def required_role(method: str, path: str, query: Mapping[str, str] | None = None) -> Role | None:
    """The least role that may call ``method path``; ``None`` when no credentials are needed."""
    normalized = path.rstrip("/")
    for rule in POLICY:
        if rule.matches(method.upper(), normalized, query or {}):
            return rule.role
    return Role.ADMIN


def allowed(role: Role, required: Role | None) -> bool:
    """Whether a user with ``role`` may call a route needing ``required``."""
    return required is None or role.rank >= required.rank
