"""A DICOMweb client for the PACS datastore whose failures carry an HTTP status.

QIDO-RS lists series, WADO-RS fetches them, STOW-RS stores SEGs.  A PACS that is down or
slow becomes :class:`PacsUnavailable` (503), one that refuses the credentials
:class:`PacsAuthError` (502: the server's own credentials, not the caller's, are wrong), any
other refusal :class:`PacsError` (502).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from activelabel.errors import ActiveLabelError

DEFAULT_TIMEOUT = 30.0
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)
"""Instances as stored (e.g. JPEG 2000): the PACS need not transcode what SimpleITK reads anyway."""


class PacsError(ActiveLabelError, RuntimeError):
    """The PACS failed a request; ``status`` is the HTTP status to answer the client with."""

    status = 502


class PacsUnavailable(PacsError):
    """The PACS did not answer (down, unreachable, timed out)."""

    status = 503


class PacsAuthError(PacsError):
    """The PACS refused the server's credentials."""

    status = 502


class _TimeoutSession(requests.Session):
    """A session whose requests time out after ``timeout`` seconds unless told otherwise."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self._timeout)
        return super().request(method, url, **kwargs)


@dataclass(frozen=True)
class SeriesRecord:
    """A series as QIDO-RS lists it."""

    series_uid: str
    study_uid: str
    modality: str
    number: int | None = None
    date: str = ""
    time: str = ""
    description: str = ""
    patient_id: str = ""

    @property
    def order(self) -> tuple[str, str, int]:
        """Sort key: later date and time, then higher series number, come last."""
        return (self.date, self.time, self.number or 0)

    def info(self) -> dict[str, Any]:
        """The record as datastore image info."""
        return {
            "SeriesInstanceUID": self.series_uid,
            "StudyInstanceUID": self.study_uid,
            "Modality": self.modality,
            "SeriesDescription": self.description,
            "PatientID": self.patient_id,
        }


SERIES_FIELDS = ("SeriesNumber", "SeriesDate", "SeriesTime", "SeriesDescription", "PatientID")


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value)


def series_record(document: dict[str, Any]) -> SeriesRecord:
    """A QIDO-RS series result (DICOM JSON) as a record."""
    ds = Dataset.from_json(document)
    number = ds.get("SeriesNumber")
    return SeriesRecord(
        series_uid=_text(ds, "SeriesInstanceUID"),
        study_uid=_text(ds, "StudyInstanceUID"),
        modality=_text(ds, "Modality"),
        number=int(number) if number not in (None, "") else None,
        date=_text(ds, "SeriesDate"),
        time=_text(ds, "SeriesTime"),
        description=_text(ds, "SeriesDescription"),
        patient_id=_text(ds, "PatientID"),
    )


class PacsClient:
    """The DICOMweb calls the PACS datastore makes, with failures as :class:`PacsError`."""

    def __init__(self, url: str, *, user: str | None, password: str | None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = url.rstrip("/")
        session = _TimeoutSession(timeout)
        if user:
            session.auth = (user, password or "")
        self._client = DICOMwebClient(url=self.url, session=session)
        # Its retries back off for about 30 s, also on a refused connection; the caller answers 503 at once.
        self._client.set_http_retry_params(retry=False)

    @contextlib.contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        try:
            yield
        except (requests.ConnectionError, requests.Timeout) as error:
            raise PacsUnavailable(f"the PACS at {self.url} is unreachable ({what}): {type(error).__name__}") from None
        except requests.HTTPError as error:
            status = error.response.status_code if error.response is not None else 0
            if status in (401, 403):
                raise PacsAuthError(
                    f"the PACS at {self.url} refused ActiveLabel's credentials ({what}: HTTP {status}); "
                    "set pacs_user and pacs_password (or ACTIVELABEL_PACS_USER / ACTIVELABEL_PACS_PASSWORD)"
                ) from None
            if status in (502, 503, 504):
                raise PacsUnavailable(f"the PACS at {self.url} is unavailable ({what}: HTTP {status})") from None
            raise PacsError(f"the PACS at {self.url} failed {what}: HTTP {status}") from None

    def search_series(self, **filters: str) -> list[SeriesRecord]:
        """QIDO-RS series matching ``filters`` (e.g. ``Modality="CT"``)."""
        with self._calling("series search"):
            documents = self._client.search_for_series(search_filters=filters, fields=list(SERIES_FIELDS))
        return [series_record(document) for document in documents]

    def series_metadata(self, study_uid: str, series_uid: str) -> list[Dataset]:
        """WADO-RS metadata (no pixel data) of every instance of a series."""
        with self._calling("series metadata"):
            documents = self._client.retrieve_series_metadata(study_uid, series_uid)
        return [Dataset.from_json(document) for document in documents]

    def retrieve_series(self, study_uid: str, series_uid: str) -> list[Dataset]:
        """WADO-RS: every instance of a series, with pixel data."""
        with self._calling("series retrieval"):
            return list(self._client.retrieve_series(study_uid, series_uid, media_types=ANY_TRANSFER_SYNTAX))

    def store(self, datasets: Sequence[Dataset]) -> None:
        """STOW-RS ``datasets``.

        Raises:
            PacsError: also when the PACS answers but lists a failed instance.
        """
        with self._calling("storing"):
            answer = self._client.store_instances(list(datasets))
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reasons = [str(item.get("FailureReason", "?")) for item in failed]
            raise PacsError(f"the PACS at {self.url} refused {len(failed)} instance(s): reasons {reasons}")
