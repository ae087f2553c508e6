"""Audits of model auto-labels: a reviewer accepts, rejects or corrects each one.

An accepted auto label becomes the volume's final label (source model, with the reviewer
recorded) and is used for training; a rejected one sends the volume back to the pool for
manual labeling; a corrected one is stored as the final label (source human).  Verdicts are
kept in SQLite; a verdict applies to one auto-label version, so a new auto label (after a
new model) may be audited again.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from activelabel.labelmap import LabelMap
from activelabel.store.label_versions import AUTO_TAG, FINAL_TAG, LabelSource, LabelVersion, Provenance
from activelabel.store.sqlite_file import SqliteFile
from activelabel.store.submissions import label_agreement
from activelabel.store.validation import InputRejected


class Verdict(str, Enum):
    """A reviewer's decision on an auto label."""

    ACCEPT = "accept"
    REJECT = "reject"
    CORRECT = "correct"

    @classmethod
    def parse(cls, text: str) -> Verdict:
        """The verdict named ``text``.

        Raises:
            InputRejected: 422 naming the choices.
        """
        try:
            return cls(text.strip().lower())
        except ValueError:
            choices = ", ".join(v.value for v in cls)
            raise InputRejected(f"verdict must be one of {choices}, got {text!r}") from None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS audits (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id TEXT NOT NULL,
    auto_version INTEGER,
    verdict TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    final_version INTEGER,
    agreement REAL,
    seconds_spent REAL,
    audited_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS audits_by_image ON audits (image_id);
"""

_COLUMNS = "image_id, auto_version, verdict, reviewer, final_version, agreement, seconds_spent, audited_at"


@dataclass(frozen=True)
class AuditRecord:
    """One verdict on one auto label.

    Attributes:
        auto_version: the label version that was audited (``None`` when it has none).
        final_version: the final label version an accept or correct stored.
        agreement: for a correction, mean Dice of the auto label vs the corrected one.
    """

    image_id: str
    auto_version: int | None
    verdict: Verdict
    reviewer: str
    final_version: int | None
    agreement: float | None
    seconds_spent: float | None
    audited_at: float

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["verdict"] = self.verdict.value
        return data


@dataclass(frozen=True)
class AuditSummary:
    """Audit numbers of a project, as ``GET /activelabel/status`` reports them."""

    audited: int
    accepted: int
    rejected: int
    corrected: int

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted / audited (``None`` before the first audit)."""
        return self.accepted / self.audited if self.audited else None


class AuditLog:
    """Append-only SQLite log of audit verdicts."""

    def __init__(self, path: str | Path) -> None:
        self.database = SqliteFile(path, schema=_SCHEMA)
        self.path = self.database.path

    def add(self, record: AuditRecord) -> AuditRecord:
        row = record.to_dict()
        with self.database.transaction() as db:
            db.execute(f"INSERT INTO audits ({_COLUMNS}) VALUES ({', '.join('?' * 8)})", tuple(row.values()))
        return record

    def all(self) -> list[AuditRecord]:
        """Every verdict, oldest first."""
        with self.database.transaction() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM audits ORDER BY id").fetchall()
        return [AuditRecord(row[0], row[1], Verdict(row[2]), *row[3:]) for row in rows]

    def audited(self) -> dict[str, set[int | None]]:
        """Image id -> the auto-label versions that have a verdict."""
        result: dict[str, set[int | None]] = {}
        with self.database.transaction() as db:
            for image_id, version in db.execute("SELECT image_id, auto_version FROM audits").fetchall():
                result.setdefault(image_id, set()).add(version)
        return result

    def rejected(self) -> dict[str, set[int | None]]:
        """Image id -> the auto-label versions that were rejected."""
        result: dict[str, set[int | None]] = {}
        for record in self.all():
            if record.verdict is Verdict.REJECT:
                result.setdefault(record.image_id, set()).add(record.auto_version)
        return result

    def summary(self) -> AuditSummary:
        counts = dict.fromkeys(Verdict, 0)
        for record in self.all():
            counts[record.verdict] += 1
        return AuditSummary(
            audited=sum(counts.values()),
            accepted=counts[Verdict.ACCEPT],
            rejected=counts[Verdict.REJECT],
            corrected=counts[Verdict.CORRECT],
        )


class AuditDatastore(Protocol):
    """What auditing needs of a datastore (``ValidatingDatastore`` has it)."""

    def get_image_uri(self, image_id: str) -> str: ...
    def get_label_uri(self, label_id: str, label_tag: str) -> str: ...
    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]: ...
    def get_labels_by_image_id(self, image_id: str) -> dict[str, str]: ...
    def has_label(self, image_id: str, tag: str = FINAL_TAG) -> bool: ...
    def store_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any], *, provenance: Provenance
    ) -> LabelVersion: ...


def auto_version(datastore: Any, image_id: str) -> int | None:
    """The label version of ``image_id``'s live auto label (``None`` when the label has none)."""
    version = (datastore.get_label_info(image_id, AUTO_TAG) or {}).get("version")
    return int(version) if isinstance(version, int) else None


def awaiting_audit(datastore: Any, audits: AuditLog, candidates: list[str]) -> list[str]:
    """Those of ``candidates`` (unlabeled ids) whose live auto label has no verdict yet."""
    done = audits.audited()
    return [
        image_id
        for image_id in candidates
        if AUTO_TAG in datastore.get_labels_by_image_id(image_id)
        and auto_version(datastore, image_id) not in done.get(image_id, set())
    ]


def _agreement(auto_path: str | Path, corrected: str | Path, labels: LabelMap) -> float | None:
    """Mean Dice of the auto label vs its correction, for NIfTI files (``None`` for other formats)."""
    if not all(str(p).lower().endswith((".nii", ".nii.gz")) for p in (auto_path, corrected)):
        return None
    return label_agreement(auto_path, corrected, labels)


def apply_verdict(
    datastore: AuditDatastore,
    audits: AuditLog,
    *,
    image_id: str,
    verdict: Verdict,
    reviewer: str,
    labels: LabelMap,
    corrected: str | Path | None = None,
    seconds_spent: float | None = None,
) -> AuditRecord:
    """Check a verdict, store what it decides, and record it.

    Raises:
        InputRejected: 404 unknown image; 409 no auto label, already labeled or already
            audited; 422 a correction without a label, a label with another verdict, or a
            corrected label that fails the upload checks.
    """
    if not datastore.get_image_uri(image_id):
        raise InputRejected(f"unknown image id {image_id!r}", status=404)
    auto_path = datastore.get_label_uri(image_id, AUTO_TAG)
    if not auto_path or not Path(auto_path).is_file():
        raise InputRejected(f"{image_id!r} has no auto label to audit", status=409)
    if datastore.has_label(image_id, FINAL_TAG):
        raise InputRejected(f"{image_id!r} already has a final label; only unlabeled volumes are audited", status=409)
    version = auto_version(datastore, image_id)
    if version in audits.audited().get(image_id, set()):
        raise InputRejected(f"the auto label of {image_id!r} was audited already", status=409)
    if verdict is Verdict.CORRECT and corrected is None:
        raise InputRejected("a correct verdict needs the corrected label (multipart field 'label')")
    if verdict is not Verdict.CORRECT and corrected is not None:
        raise InputRejected(f"only a correct verdict takes a label, not {verdict.value}")
    final, agreement = None, None
    if verdict is Verdict.ACCEPT:
        params = (datastore.get_label_info(image_id, AUTO_TAG) or {}).get("params") or {}
        model_version = params.get("model_version") if isinstance(params, dict) else None
        provenance = Provenance(
            source=LabelSource.MODEL,
            reviewer=reviewer,
            seconds_spent=seconds_spent,
            model_version=model_version if isinstance(model_version, int) else None,
            details={"accepted_from_version": version},
        )
        info = {"accepted_by": reviewer, "accepted_from_version": version}
        final = datastore.store_label(image_id, auto_path, FINAL_TAG, info, provenance=provenance).version
    elif verdict is Verdict.CORRECT:
        provenance = Provenance(
            source=LabelSource.HUMAN,
            author=reviewer,
            seconds_spent=seconds_spent,
            details={"corrected_from_version": version},
        )
        info = {"client_id": reviewer, "corrected_from_version": version}
        final = datastore.store_label(image_id, str(corrected), FINAL_TAG, info, provenance=provenance).version
        agreement = _agreement(auto_path, corrected, labels)
    record = AuditRecord(image_id, version, verdict, reviewer, final, agreement, seconds_spent, time.time())
    return audits.add(record)
