"""The project's state checked before the server binds its port: damaged databases, torn writes.

A SQLite file found corrupt or truncated is rebuilt when its content is derivable (datastore
index, leases, scores: the log says so) and ends the start with one line naming it otherwise
(label versions, submissions, audits: history nothing else holds).  Temporary files of writes
a kill interrupted (pre-segmentations, label versions, live labels) are removed, so no later
reader can mistake them for whole files.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from activelabel.config import Settings, is_remote, load_settings
from activelabel.datastore.index_db import DatastoreDatabase
from activelabel.datastore.indexed import DATABASE_FILE
from activelabel.fsutil import remove_partial_writes
from activelabel.store.audit import AuditLog
from activelabel.store.label_versions import LabelVersionStore
from activelabel.store.leases import LeaseStore
from activelabel.store.scores import ScoreStore
from activelabel.store.submissions import SubmissionLog

logger = logging.getLogger(__name__)


def check_databases(settings: Settings, *, studies: str) -> None:
    """Open every database of the project once: derivable ones are rebuilt if damaged, the others refused.

    Raises:
        CorruptDatabaseError: a damaged database whose content nothing else holds.
    """
    LabelVersionStore(settings.label_versions_dir, index=settings.label_versions_path)
    SubmissionLog(settings.submissions_path)
    AuditLog(settings.audits_path)
    ScoreStore(settings.scores_path)
    LeaseStore(settings.leases_path, seconds=settings.lease_seconds)
    if not is_remote(studies):
        DatastoreDatabase(settings.state_dir / DATABASE_FILE)


def remove_torn_writes(settings: Settings, *, studies: str) -> int:
    """Delete temporary files that interrupted atomic writes left; returns how many."""
    folders = [settings.presegmentations_dir, settings.label_versions_dir]
    if not is_remote(studies):
        folders.append(f"{studies}/labels")
    removed = [path for folder in folders for path in remove_partial_writes(folder)]
    if removed:
        logger.warning(
            "removed %d temporary file(s) of interrupted writes (never used): %s",
            len(removed),
            ", ".join(str(p) for p in removed[:5]),
        )
    return len(removed)


def check_state(conf: Mapping[str, str], *, studies: str, app_dir: str) -> None:
    """Everything above, for the server that is about to serve ``studies`` with ``conf``.

    Raises:
        CorruptDatabaseError: see :func:`check_databases`.
        ConfigError: a setting that does not parse.
    """
    settings = load_settings(conf, studies=studies, app_dir=app_dir)
    check_databases(settings, studies=studies)
    remove_torn_writes(settings, studies=studies)
