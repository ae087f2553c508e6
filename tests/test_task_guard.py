"""Which requests the one-task-at-a-time guard applies to."""

from __future__ import annotations

import pytest

from activelabel.server.task_guard import guarded_kind


@pytest.mark.parametrize(
    ("method", "path", "query", "kind"),
    [
        ("POST", "/train/segmentation", b"", "train"),
        ("POST", "/train/", b"", "train"),
        ("POST", "/scoring/epistemic", b"", "scoring"),
        ("POST", "/train/segmentation", b"enqueue=true", None),
        ("POST", "/train/segmentation", b"enqueue=false", "train"),
        ("GET", "/train/", b"", None),
        ("DELETE", "/train/", b"", None),
        ("POST", "/infer/segmentation", b"", None),
        ("POST", "/activelabel/skip", b"", None),
    ],
)
def test_only_task_start_requests_without_enqueue_are_guarded(
    method: str, path: str, query: bytes, kind: str | None
) -> None:
    assert guarded_kind(method, path, query) == kind
