"""HTTP client of an ActiveLabel (MONAI Label) server, on ``urllib`` so it runs inside Slicer as is.

One method per endpoint the labeling loop uses.  Every failure, from a refused connection to a
4xx answer, comes out as :class:`~ActiveLabelLib.errors.ActiveLabelError` with a one-line
message; the server's ``detail`` is kept.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import multipart
from .errors import ActiveLabelError
from .login import Login

DEFAULT_TIMEOUT = 120.0
"""Seconds one request may take; infer on a large CT on CPU takes tens of seconds."""

REFINE_MODEL = "refine"
"""The server's click-based correction task (an infer task, listed among the ``models`` of ``/info/``)."""

_FILENAME = re.compile(r"filename\*?=(?:UTF-8'')?\"?([^\";]+)\"?", re.IGNORECASE)


@dataclass(frozen=True)
class Answer:
    """A successful HTTP answer."""

    status: int
    content_type: str
    body: bytes
    disposition: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The body parsed as JSON."""
        try:
            return json.loads(self.body.decode("utf-8"))
        except ValueError as error:
            raise ActiveLabelError(f"the server's answer is not JSON ({error})") from None

    @property
    def filename(self) -> str:
        """The file name from ``Content-Disposition`` (empty when there is none)."""
        match = _FILENAME.search(self.disposition)
        return urllib.parse.unquote(match.group(1)) if match else ""


@dataclass(frozen=True)
class UncertaintyMapAnswer:
    """A volume's voxel uncertainty map (float NIfTI on the image's grid)."""

    file: multipart.FilePart
    metric: str
    model_version: int | None


@dataclass(frozen=True)
class InferAnswer:
    """The server's segmentation of one image."""

    label: multipart.FilePart
    params: dict[str, Any]


class ActiveLabelClient:
    """Talks to one server on behalf of one user.

    Args:
        server_url: e.g. ``http://127.0.0.1:8000``.
        client_id: the user name, sent as ``client_id`` like MONAI Label's own clients do; the
            server records it as the author of submitted labels.
        timeout: seconds per request.
        token: API token for a server with access control, sent as ``Authorization: Bearer``; the
            server then records the token's user as the author, whatever ``client_id`` says.
        password: the password of user ``client_id``, sent as HTTP Basic (when there is no token);
            kept in memory only.

    Raises:
        ActiveLabelError: for an address without ``http(s)://`` or an inconsistent login
            (see :meth:`Login.from_form <ActiveLabelLib.login.Login.from_form>`).
    """

    def __init__(
        self,
        server_url: str,
        *,
        client_id: str = "",
        timeout: float = DEFAULT_TIMEOUT,
        token: str = "",
        password: str = "",
    ) -> None:
        url = server_url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ActiveLabelError(f"server address {server_url!r} must start with http:// or https://")
        self.server_url = url
        self.client_id = client_id.strip()
        self.timeout = timeout
        self.login = Login.from_form(user=self.client_id, token=token, password=password)

    @property
    def token(self) -> str:
        """The API token sent with every request (empty without one)."""
        return self.login.token

    def info(self) -> dict[str, Any]:
        """``GET /info/``: app name, models with their labels, strategies, scoring methods."""
        return self._call("GET", "/info/", action="Connecting").json()

    def status(self) -> dict[str, Any] | None:
        """``GET /activelabel/status``; ``None`` from a plain MONAI Label server (no such route)."""
        try:
            return self._call("GET", "/activelabel/status", action="Reading the project status").json()
        except ActiveLabelError as error:
            if error.status in (404, 501):
                return None
            raise

    def next_sample(self, strategy: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``POST /activelearning/{strategy}``: the image the strategy picks; ``{}`` when none is left."""
        body = self._with_client_id(params)
        path = f"/activelearning/{urllib.parse.quote(strategy, safe='')}"
        return self._call("POST", path, json_body=body, action="Asking for the next sample").json()

    def download_image(self, image_id: str) -> multipart.FilePart:
        """``GET /datastore/image?image=ID``: the image file as stored on the server."""
        answer = self._call("GET", "/datastore/image", query={"image": image_id}, action="Downloading the image")
        return multipart.FilePart(answer.filename or f"{image_id}.nii.gz", answer.body, answer.content_type)

    def infer(self, model: str, image_id: str, params: Mapping[str, Any] | None = None) -> InferAnswer:
        """``POST /infer/{model}?image=ID``: the segmentation and its JSON (label names, model version)."""
        fields = {"params": json.dumps(self._with_client_id(params))}
        path = f"/infer/{urllib.parse.quote(model, safe='')}"
        action = "Segmenting the image"
        answer = self._call("POST", path, query={"image": image_id}, form=(fields, {}), action=action)
        return _infer_answer(answer, action=action)

    def refine(
        self,
        image_id: str,
        clicks: Mapping[str, Any],
        *,
        label: multipart.FilePart | None = None,
        model: str = REFINE_MODEL,
    ) -> InferAnswer:
        """``POST /infer/refine?image=ID``: the segmentation corrected by the clinician's clicks.

        Args:
            image_id: the image the clicks were placed on.
            clicks: MONAI Label's DeepEdit click parameters, ``{label name: [[i, j, k], ...],
                "background": [[i, j, k], ...]}`` in voxel indices of the image file
                (:meth:`ActiveLabelLib.clicks.ClickSet.params`).
            label: the current mask (a label map on the image's grid), sent as the ``label`` file;
                without it the server refines its own segmentation.
            model: the server's refine task.
        """
        fields = {"params": json.dumps(self._with_client_id(clicks))}
        files = {"label": label} if label is not None else {}
        path = f"/infer/{urllib.parse.quote(model, safe='')}"
        action = "Refining the segmentation"
        answer = self._call("POST", path, query={"image": image_id}, form=(fields, files), action=action)
        return _infer_answer(answer, action=action)

    def uncertainty_map(self, image_id: str, *, metric: str | None = None) -> UncertaintyMapAnswer:
        """``GET /activelabel/uncertainty-map?image=ID``: the current model's voxel uncertainty.

        Raises:
            ActiveLabelError: also when the server does not serve maps (plain MONAI Label).
        """
        query = {"image": image_id, **({"metric": metric} if metric else {})}
        action = "Fetching the uncertainty map"
        try:
            answer = self._call("GET", "/activelabel/uncertainty-map", query=query, action=action)
        except ActiveLabelError as error:
            if error.status == 501 or (error.status == 404 and error.detail == "Not Found"):
                raise ActiveLabelError(f"{action} failed: this server does not serve uncertainty maps") from None
            raise
        version = answer.headers.get("x-model-version", "")
        return UncertaintyMapAnswer(
            file=multipart.FilePart(answer.filename or f"{image_id}_uncertainty.nii.gz", answer.body),
            metric=answer.headers.get("x-uncertainty-metric", metric or ""),
            model_version=int(version) if version.isdigit() else None,
        )

    def save_label(
        self,
        image_id: str,
        label: multipart.FilePart,
        *,
        tag: str = "final",
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``PUT /datastore/label?image=ID&tag=TAG``: store a label; the answer carries the submission."""
        fields = {"params": json.dumps(self._with_client_id(params))}
        return self._call(
            "PUT",
            "/datastore/label",
            query={"image": image_id, "tag": tag},
            form=(fields, {"label": label}),
            action="Submitting the label",
        ).json()

    def skip(self, image_id: str) -> bool:
        """``POST /activelabel/skip``: end this client's lease on an image; whether one was released.

        ``False`` when the server has no leases (plain MONAI Label, older ActiveLabel) or the
        lease already ended (expired, or held under another client id).
        """
        query = {"image": image_id, "client_id": self.client_id or "anonymous"}
        try:
            self._call("POST", "/activelabel/skip", query=query, action="Skipping the image")
        except ActiveLabelError as error:
            if error.status == 409 or (
                error.status in (404, 405) and error.detail in ("Not Found", "Method Not Allowed")
            ):
                return False
            raise
        return True

    def train_start(self, model: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``POST /train/{model}``: start fine-tuning in the background."""
        path = f"/train/{urllib.parse.quote(model, safe='')}"
        return self._call("POST", path, json_body=self._with_client_id(options), action="Starting training").json()

    def train_status(self) -> dict[str, Any] | None:
        """``GET /train/``: the latest training task (``status``, ``details``); ``None`` when there was none."""
        try:
            return self._call("GET", "/train/", action="Reading the training status").json()
        except ActiveLabelError as error:
            if error.status == 404:
                return None
            raise

    def train_stop(self) -> dict[str, Any]:
        """``DELETE /train/``: stop the running training task."""
        return self._call("DELETE", "/train/", action="Stopping training").json()

    def score_start(self, method: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``POST /scoring/{method}``: score the unlabeled images (what ``most_uncertain`` ranks by)."""
        path = f"/scoring/{urllib.parse.quote(method, safe='')}"
        return self._call("POST", path, json_body=self._with_client_id(options), action="Starting scoring").json()

    def score_status(self) -> dict[str, Any] | None:
        """``GET /scoring/``: the latest scoring task; ``None`` when there was none."""
        try:
            return self._call("GET", "/scoring/", action="Reading the scoring status").json()
        except ActiveLabelError as error:
            if error.status == 404:
                return None
            raise

    def _with_client_id(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        body = dict(params or {})
        if self.client_id:
            body["client_id"] = self.client_id
        return body

    def _call(
        self,
        method: str,
        path: str,
        *,
        action: str,
        query: Mapping[str, str] | None = None,
        json_body: Mapping[str, Any] | None = None,
        form: tuple[Mapping[str, str], Mapping[str, multipart.FilePart]] | None = None,
    ) -> Answer:
        """One request; non-2xx answers and network failures become :class:`ActiveLabelError`."""
        url = self.server_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data, headers = None, {"Accept": "application/json, multipart/form-data, */*"}
        authorization = self.login.authorization()
        if authorization:
            headers["Authorization"] = authorization
        if json_body is not None:
            data, headers["Content-Type"] = json.dumps(json_body).encode(), "application/json"
        elif form is not None:
            headers["Content-Type"], data = multipart.encode(*form)
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return Answer(
                    status=response.status,
                    content_type=response.headers.get("Content-Type", ""),
                    body=response.read(),
                    disposition=response.headers.get("Content-Disposition", ""),
                    headers={key.lower(): value for key, value in response.headers.items()},
                )
        except urllib.error.HTTPError as error:
            if error.code == 401:
                raise ActiveLabelError.login_refused(action, self.login.kind, error.read()) from None
            raise ActiveLabelError.from_http(action, error.code, error.read()) from None
        except urllib.error.URLError as error:
            raise ActiveLabelError.unreachable(action, self.server_url, error.reason) from None
        except TimeoutError:
            message = f"{action} failed: no answer from {self.server_url} in {self.timeout:.0f} s"
            raise ActiveLabelError(message) from None
        except OSError as error:
            raise ActiveLabelError.unreachable(action, self.server_url, error) from None


def _infer_answer(answer: Answer, *, action: str) -> InferAnswer:
    """The label file and JSON of an infer answer (MONAI Label's multipart ``params`` + file)."""
    form = multipart.decode(answer.content_type, answer.body)
    if not form.files:
        raise ActiveLabelError(f"{action} failed: the server's answer holds no label file")
    label = next(iter(form.files.values()))
    try:
        params_out = json.loads(form.fields.get("params") or "{}")
    except ValueError:
        params_out = {}
    return InferAnswer(label=label, params=params_out if isinstance(params_out, dict) else {})
