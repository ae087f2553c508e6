"""Opening the datastore of a project: a studies folder, or a DICOMweb (PACS) URL.

One function, so the MONAI Label app and the command line (``activelabel score``) see the
same images, labels and checks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from monailabel.config import settings as monailabel_settings
from monailabel.interfaces.datastore import Datastore

from activelabel.config import Settings, is_remote
from activelabel.datastore.indexed import DATABASE_FILE
from activelabel.datastore.local import ValidatingDatastore
from activelabel.datastore.pacs import open_pacs_datastore
from activelabel.store.label_versions import LabelVersionStore


def open_datastore(
    studies: str,
    *,
    settings: Settings,
    conf: Mapping[str, str],
    versions: LabelVersionStore,
    on_saved: Callable[[str, str, Path, dict[str, Any]], None] | None = None,
) -> Datastore:
    """The datastore of ``studies`` with the project's label checks and label versions.

    A local folder also completes the consensus of volumes whose last reader's upload a
    crash cut short.

    Args:
        studies: the studies folder, or a DICOMweb URL.
        settings: the project's resolved settings.
        conf: the ``--conf`` pairs (the PACS reads its ``pacs_*`` keys from them).
        versions: where every stored label is kept, with its provenance.
        on_saved: called after an upload is stored (image id, tag, stored path, label info).
    """
    if is_remote(studies):
        return open_pacs_datastore(
            studies,
            conf=conf,
            state_dir=settings.state_dir,
            labels=settings.labels,
            versions=versions,
            readers=settings.readers,
            on_saved=on_saved,
        )
    datastore = ValidatingDatastore(
        studies,
        labels=settings.labels,
        versions=versions,
        readers=settings.readers,
        on_saved=on_saved,
        database=settings.state_dir / DATABASE_FILE,
        extensions=monailabel_settings.MONAI_LABEL_DATASTORE_FILE_EXT,
        auto_reload=monailabel_settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
        read_only=monailabel_settings.MONAI_LABEL_DATASTORE_READ_ONLY,
    )
    datastore.complete_consensus()  # volumes whose last reader's upload a crash cut short
    return datastore
