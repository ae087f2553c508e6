"""Access control: the policy table, users file, credentials, start-up mode, and a real server enforcing them.

The unit tests need no server; the integration tests share one server (loopback, with a users
file) and run in file order.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
from monailabel.client import MONAILabelClient

from activelabel.access.authentication import AuthenticationError, Authenticator
from activelabel.access.mode import AccessConfigError, AuthSetting, bind_host_from_argv, is_loopback, resolve_access
from activelabel.access.policy import Role, allowed, required_role
from activelabel.access.users import User, UsersFileError, UserStore, password_hash, token_hash, verify_password
from activelabel.cli import build_parser, main
from activelabel.commands.serve import server_command
from activelabel.config import DEFAULT_APP_DIR
from activelabel.server.multipart_scan import FilenameScanner
from activelabel.testing.server_process import ServerProcess, free_port
from tests.conftest import ServerFactory
from tests.helpers import write_nifti

EXTENSION = Path(__file__).resolve().parents[1] / "slicer_extension" / "ActiveLabel"
sys.path.insert(0, str(EXTENSION))

from ActiveLabelLib.client import ActiveLabelClient  # noqa: E402
from ActiveLabelLib.errors import ActiveLabelError  # noqa: E402
from ActiveLabelLib.login import Login  # noqa: E402
from ActiveLabelLib.session import LabelingSession  # noqa: E402
from ActiveLabelLib.settings import JsonFileStore, Settings  # noqa: E402

TOKENS = {"ann": "token-of-ann-0123456789", "rev": "token-of-rev-0123456789", "adm": "token-of-adm-0123456789"}
PASSWORD = "correct horse battery"


# ---------------------------------------------------------------- policy table


@pytest.mark.parametrize(
    ("method", "path", "query", "role"),
    [
        ("GET", "/", {}, None),
        ("GET", "/openapi.json", {}, None),
        ("OPTIONS", "/train/segmentation", {}, None),
        ("GET", "/info/", {}, Role.ANNOTATOR),
        ("GET", "/activelabel/status", {}, Role.ANNOTATOR),
        ("POST", "/activelearning/most_uncertain", {}, Role.ANNOTATOR),
        ("POST", "/activelearning/audit", {}, Role.REVIEWER),
        ("POST", "/activelearning/x", {"strategy": "audit"}, Role.REVIEWER),
        ("POST", "/infer/segmentation", {"image": "ct_001"}, Role.ANNOTATOR),
        ("PUT", "/datastore/label", {"image": "ct_001", "tag": "final"}, Role.ANNOTATOR),
        ("GET", "/datastore/image", {"image": "ct_001"}, Role.ANNOTATOR),
        ("POST", "/activelabel/skip", {}, Role.ANNOTATOR),
        ("POST", "/activelabel/audit", {}, Role.REVIEWER),
        ("GET", "/activelabel/audit/summary", {}, Role.REVIEWER),
        ("GET", "/train/", {}, Role.ANNOTATOR),
        ("POST", "/train/segmentation", {}, Role.ADMIN),
        ("DELETE", "/train/", {}, Role.ADMIN),
        ("POST", "/scoring/epistemic", {}, Role.ADMIN),
        ("POST", "/batch/infer/segmentation", {}, Role.ADMIN),
        ("PUT", "/datastore/image", {}, Role.ADMIN),
        ("DELETE", "/datastore/label", {"id": "ct_001", "tag": "final"}, Role.ADMIN),
        ("DELETE", "/datastore/image", {"id": "ct_001"}, Role.ADMIN),
        ("PUT", "/model/segmentation", {}, Role.ADMIN),
        ("GET", "/logs/", {}, Role.ADMIN),
        ("GET", "/datastore/dataset", {}, Role.ADMIN),
        ("POST", "/reload", {}, Role.ADMIN),
        ("PATCH", "/some/new/route", {}, Role.ADMIN),
    ],
)
def test_policy_table_names_the_least_role(method: str, path: str, query: dict[str, str], role: Role | None) -> None:
    assert required_role(method, path, query) == role


def test_roles_are_ordered() -> None:
    assert allowed(Role.ADMIN, Role.REVIEWER)
    assert allowed(Role.REVIEWER, Role.ANNOTATOR)
    assert not allowed(Role.ANNOTATOR, Role.REVIEWER)
    assert not allowed(Role.REVIEWER, Role.ADMIN)
    assert allowed(Role.ANNOTATOR, None)


# ---------------------------------------------------------------- start-up mode


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("127.0.0.2", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("example.org", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_access_is_off_only_on_loopback_or_when_asked(tmp_path: Path) -> None:
    assert resolve_access(auth=AuthSetting.AUTO, users_file=None, host="127.0.0.1").description == (
        "access control: off (loopback only)"
    )
    assert not resolve_access(auth=AuthSetting.OFF, users_file=None, host="0.0.0.0").enabled
    on = resolve_access(auth=AuthSetting.AUTO, users_file=str(tmp_path / "users.json"), host="0.0.0.0")
    assert on.enabled
    assert on.users_file == tmp_path / "users.json"
    with pytest.raises(AccessConfigError, match=r"refusing to serve on 0\.0\.0\.0 without access control"):
        resolve_access(auth=AuthSetting.AUTO, users_file=None, host="0.0.0.0")
    with pytest.raises(AccessConfigError, match="auth = on needs a users file"):
        resolve_access(auth=AuthSetting.ON, users_file=None, host="127.0.0.1")


def test_bind_host_is_read_from_the_server_command_line() -> None:
    assert bind_host_from_argv(["main.py", "start_server", "--host", "127.0.0.1"]) == "127.0.0.1"
    assert bind_host_from_argv(["uvicorn", "--host=::1"]) == "::1"
    assert bind_host_from_argv(["main.py", "start_server", "-i", "10.0.0.1"]) == "10.0.0.1"
    assert bind_host_from_argv(["main.py", "start_server"]) == "0.0.0.0"


def test_serve_on_a_public_address_without_users_is_refused(
    ct_studies: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--studies", str(ct_studies), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: refusing to serve on 0.0.0.0 without access control")
    args = build_parser().parse_args(["serve", "--studies", str(ct_studies), "--host", "0.0.0.0"])
    args.conf = [["auth", "off"]]
    argv, _ = server_command(args)
    assert argv[argv.index("--host") + 1] == "0.0.0.0"


# ---------------------------------------------------------------- users file and credentials


def _users_file(path: Path) -> Path:
    store = UserStore(
        (
            User("ann", Role.ANNOTATOR, token_hash(TOKENS["ann"])),
            User("rev", Role.REVIEWER, token_hash(TOKENS["rev"]), password_hash(PASSWORD)),
            User("adm", Role.ADMIN, token_hash(TOKENS["adm"])),
        )
    )
    store.save(path)
    return path


def _basic(name: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{secret}".encode()).decode()


def test_passwords_are_salted_and_verified() -> None:
    first, second = password_hash(PASSWORD), password_hash(PASSWORD)
    assert first != second
    assert first.startswith("scrypt$")
    assert verify_password(PASSWORD, first)
    assert not verify_password("wrong password", first)
    assert not verify_password(PASSWORD, "not-a-hash")


def test_authenticator_accepts_bearer_and_basic_and_rejects_the_rest(tmp_path: Path) -> None:
    auth = Authenticator(_users_file(tmp_path / "users.json"))
    assert auth.authenticate(f"Bearer {TOKENS['ann']}").name == "ann"
    assert auth.authenticate(_basic("rev", PASSWORD)).role is Role.REVIEWER
    assert auth.authenticate(_basic("adm", TOKENS["adm"])).name == "adm"  # the token works as a password
    for header, message in [
        (None, "authentication required"),
        ("Bearer nope", "invalid or revoked token"),
        (_basic("rev", "wrong"), "wrong user name or password"),
        (_basic("nobody", PASSWORD), "wrong user name or password"),
        ("Basic %%%", "malformed Basic credentials"),
        ("Digest abc", "unsupported authorization scheme"),
    ]:
        with pytest.raises(AuthenticationError, match=message):
            auth.authenticate(header)


def test_authenticator_rereads_a_changed_users_file(tmp_path: Path) -> None:
    path = _users_file(tmp_path / "users.json")
    auth = Authenticator(path)
    UserStore.load(path).without_user("ann").save(path)
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    with pytest.raises(AuthenticationError, match="invalid or revoked token"):
        auth.authenticate(f"Bearer {TOKENS['ann']}")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not readable JSON"),
        ('{"people": []}', "expected"),
        ('{"users": {"x": {"role": "boss", "token_sha256": "' + "0" * 64 + '"}}}', "has role 'boss'"),
        ('{"users": {"x": {"role": "admin"}}}', "neither token_sha256 nor password"),
        ('{"users": {"x": {"role": "admin", "token_sha256": "plain-token"}}}', "not 64 hex digits"),
    ],
)
def test_malformed_users_files_are_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "users.json"
    path.write_text(content)
    with pytest.raises(UsersFileError, match=message):
        UserStore.load(path)


def test_users_command_adds_lists_and_removes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "users.json"
    assert main(["users", "add", "reader-1", "--role", "annotator", "--file", str(path)]) == 0
    token = capsys.readouterr().out.strip()
    assert len(token) >= 40
    text = path.read_text()
    assert token not in text
    assert token_hash(token) in text
    assert path.stat().st_mode & 0o777 == 0o600
    assert main(["users", "add", "reader-1", "--role", "admin", "--file", str(path)]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["users", "add", "bad/name", "--role", "admin", "--file", str(path)]) == 2
    assert "is not allowed" in capsys.readouterr().err
    assert main(["users", "list", "--file", str(path)]) == 0
    assert "reader-1                annotator   token" in capsys.readouterr().out
    assert Authenticator(path).authenticate(f"Bearer {token}").name == "reader-1"
    assert main(["users", "remove", "reader-1", "--file", str(path)]) == 0
    assert UserStore.load(path).users == ()


def test_upload_file_names_are_found_across_chunks() -> None:
    body = (
        b'--B\r\nContent-Disposition: form-data; name="params"\r\n\r\n{}\r\n'
        b'--B\r\nContent-Disposition: form-data; name="label"; filename="../x.nii.gz"\r\n\r\n'
        + bytes(range(256)) * 64
        + b"\r\n--B\r\nContent-Disposition: form-data; name=\"f\"; filename*=UTF-8''a%00b.nii\r\n\r\nz\r\n--B--\r\n"
    )
    for size in (1, 7, 100, len(body)):
        scanner = FilenameScanner("multipart/form-data; boundary=B")
        names = [name for start in range(0, len(body), size) for name in scanner.feed(body[start : start + size])]
        assert names == ["../x.nii.gz", "a\0b.nii"]


# ---------------------------------------------------------------- a server with access control


@pytest.fixture(scope="module")
def secured(server_factory: ServerFactory) -> ServerProcess:
    """A loopback server with three users: ann (annotator), rev (reviewer), adm (admin)."""
    studies = server_factory.phantoms("secured", count=4, seed=0, labeled=1)
    users = _users_file(studies.parent / "users.json")
    return server_factory.start(studies, conf={"users_file": str(users)})


def _as(user: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[user]}"} if user else {}


def test_secured_server_logs_its_mode(secured: ServerProcess) -> None:
    assert "access control: on: 3 users from" in secured.log.read_text()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/info/"),
        ("GET", "/datastore/"),
        ("GET", "/activelabel/status"),
        ("POST", "/activelearning/random"),
        ("PUT", "/datastore/label?image=ct_001&tag=final"),
        ("POST", "/train/segmentation"),
        ("GET", "/logs/"),
    ],
)
def test_requests_without_credentials_get_401_with_a_challenge(secured: ServerProcess, method: str, path: str) -> None:
    response = requests.request(method, secured.url + path, json={}, timeout=30)
    assert response.status_code == 401, response.text
    assert response.json()["detail"] == "authentication required: send 'Authorization: Bearer <token>'"
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")


def test_a_wrong_token_gets_401(secured: ServerProcess) -> None:
    response = requests.get(f"{secured.url}/info/", headers={"Authorization": "Bearer forged"}, timeout=30)
    assert response.status_code == 401
    assert response.json()["detail"] == "invalid or revoked token"


def test_docs_stay_public(secured: ServerProcess) -> None:
    assert requests.get(f"{secured.url}/openapi.json", timeout=30).status_code == 200


@pytest.mark.parametrize(
    ("user", "method", "path", "needed"),
    [
        ("ann", "POST", "/train/segmentation", "admin"),
        ("ann", "DELETE", "/train/", "admin"),
        ("ann", "POST", "/scoring/epistemic", "admin"),
        ("ann", "POST", "/batch/infer/segmentation", "admin"),
        ("ann", "DELETE", "/datastore/label?id=ct_000&tag=final", "admin"),
        ("ann", "DELETE", "/datastore/image?id=ct_000", "admin"),
        ("ann", "PUT", "/datastore/image?image=new", "admin"),
        ("ann", "PUT", "/model/segmentation", "admin"),
        ("ann", "GET", "/logs/", "admin"),
        ("ann", "POST", "/activelearning/audit", "reviewer"),
        ("ann", "POST", "/activelabel/audit", "reviewer"),
        ("rev", "POST", "/train/segmentation", "admin"),
        ("rev", "DELETE", "/datastore/label?id=ct_000&tag=final", "admin"),
    ],
)
def test_too_low_a_role_gets_403(secured: ServerProcess, user: str, method: str, path: str, needed: str) -> None:
    response = requests.request(method, secured.url + path, headers=_as(user), json={}, timeout=30)
    assert response.status_code == 403, response.text
    detail = response.json()["detail"]
    assert detail.startswith(f"user '{user}' (")
    assert detail.endswith(f"it needs the {needed} role")


@pytest.mark.parametrize(
    ("user", "method", "path"),
    [
        ("ann", "GET", "/info/"),
        ("ann", "GET", "/activelabel/status"),
        ("ann", "GET", "/datastore/image?image=ct_001"),
        ("ann", "GET", "/train/"),
        ("rev", "GET", "/info/"),
        ("adm", "GET", "/logs/"),
        ("adm", "GET", "/datastore/?output=all"),
    ],
)
def test_allowed_roles_pass(secured: ServerProcess, user: str, method: str, path: str) -> None:
    response = requests.request(method, secured.url + path, headers=_as(user), timeout=60)
    assert response.status_code in (200, 404), f"{response.status_code} {response.text[:300]}"
    assert response.status_code == 200 or path == "/train/"  # no training task yet: 404


def test_reviewers_reach_the_audit_routes(secured: ServerProcess) -> None:
    response = requests.post(f"{secured.url}/activelearning/audit", headers=_as("rev"), json={}, timeout=60)
    assert response.status_code not in (401, 403), response.text


def test_basic_authentication_with_a_password(secured: ServerProcess) -> None:
    response = requests.get(f"{secured.url}/info/", auth=("rev", PASSWORD), timeout=30)
    assert response.status_code == 200
    response = requests.get(f"{secured.url}/info/", auth=("rev", "wrong password"), timeout=30)
    assert response.status_code == 401
    assert response.json()["detail"] == "wrong user name or password"


def test_the_lease_goes_to_the_authenticated_user(secured: ServerProcess) -> None:
    response = requests.post(
        f"{secured.url}/activelearning/random", headers=_as("ann"), json={"client_id": "someone-else"}, timeout=60
    )
    assert response.status_code == 200, response.text
    sample = response.json()
    assert sample["lease"]["client_id"] == "ann"
    skipped = requests.post(
        f"{secured.url}/activelabel/skip",
        params={"image": sample["id"], "client_id": "someone-else"},
        headers=_as("ann"),
        timeout=30,
    )
    assert skipped.status_code == 200, skipped.text  # released: the lease is ann's, whatever client_id says


def test_a_label_is_authored_by_the_authenticated_user(secured: ServerProcess, tmp_path: Path) -> None:
    image = nib.load(secured.studies / "ct_002.nii.gz")
    label = write_nifti(tmp_path / "label.nii.gz", np.zeros(image.shape, np.uint8), affine=image.affine)
    with label.open("rb") as handle:
        response = requests.put(
            f"{secured.url}/datastore/label",
            params={"image": "ct_002", "tag": "final"},
            data={"params": json.dumps({"client_id": "posing-as-another"})},
            files={"label": ("label.nii.gz", handle)},
            headers=_as("ann"),
            timeout=60,
        )
    assert response.status_code == 200, response.text
    info = requests.get(
        f"{secured.url}/datastore/label/info",
        params={"label": "ct_002", "tag": "final"},
        headers=_as("ann"),
        timeout=30,
    ).json()
    assert info["client_id"] == "ann"


def test_monailabel_client_sends_a_token(secured: ServerProcess, tmp_path: Path) -> None:
    client = MONAILabelClient(secured.url, tmpdir=str(tmp_path), client_id="ann")
    client.update_auth({"token_type": "Bearer", "access_token": TOKENS["ann"]})
    assert "segmentation" in client.info()["models"]


def test_slicer_client_sends_its_token(secured: ServerProcess) -> None:
    assert "segmentation" in ActiveLabelClient(secured.url, token=TOKENS["ann"]).info()["models"]
    with pytest.raises(ActiveLabelError) as caught:
        ActiveLabelClient(secured.url).info()
    assert caught.value.status == 401
    assert "authentication required" in str(caught.value)


def _slicer_session(server: ServerProcess, login: Login, workdir: Path) -> LabelingSession:
    """A Slicer module session logged in as the panel's fields say (what ``open_session`` builds)."""
    client = ActiveLabelClient(server.url, client_id=login.user, token=login.token, password=login.password)
    return LabelingSession(client, workdir=workdir)


def test_the_slicer_module_logs_in_with_a_token(secured: ServerProcess, tmp_path: Path) -> None:
    session = _slicer_session(secured, Login.from_form(user="ann", token=TOKENS["ann"]), tmp_path)
    assert "segmentation" in session.connect().models
    sample = session.next_sample("random")
    stored = nib.load(secured.studies / f"{sample.image_id}.nii.gz")
    assert nib.load(sample.image_file).shape == stored.shape  # the download carried the token too
    assert session.skip().released_on_server


def test_the_slicer_module_logs_in_with_a_user_name_and_password(secured: ServerProcess, tmp_path: Path) -> None:
    session = _slicer_session(secured, Login.from_form(user="rev", password=PASSWORD), tmp_path)
    summary = session.connect()
    assert "segmentation" in summary.models
    assert summary.total == 4


@pytest.mark.parametrize(
    ("login", "message"),
    [
        (
            Login(user="rev", password="wrong password"),
            "Connecting failed: the server refused the login (401: wrong user name or password); "
            "check the user name and password",
        ),
        (
            Login(user="ann", token="forged-token"),
            "Connecting failed: the server refused the login (401: invalid or revoked token); check the token",
        ),
        (
            Login(user="ann"),
            "Connecting failed: the server refused the login (401: authentication required: send "
            "'Authorization: Bearer <token>'); this server needs a login: enter a token, or a user name and password",
        ),
    ],
)
def test_a_wrong_login_gives_the_servers_reason_in_one_line(
    secured: ServerProcess, tmp_path: Path, login: Login, message: str
) -> None:
    with pytest.raises(ActiveLabelError) as refused:
        _slicer_session(secured, login, tmp_path).connect()
    assert str(refused.value) == message
    assert refused.value.status == 401


def test_the_settings_written_after_a_login_hold_no_password(secured: ServerProcess, tmp_path: Path) -> None:
    store = JsonFileStore(tmp_path / "settings.json")
    password_login = Login.from_form(user="rev", password=PASSWORD)
    _slicer_session(secured, password_login, tmp_path).connect()
    Settings().with_server(secured.url).with_login(password_login).save(store)
    written = (tmp_path / "settings.json").read_text()
    assert PASSWORD not in written
    assert base64.b64encode(f"rev:{PASSWORD}".encode()).decode() not in written
    assert "password" not in written.lower()
    assert Settings.load(store).user == "rev"
    assert Settings.load(store).token == ""

    token_login = Login.from_form(user="ann", token=TOKENS["ann"])
    _slicer_session(secured, token_login, tmp_path).connect()
    Settings.load(store).with_login(token_login).save(store)
    remembered = Settings.load(store)
    assert (remembered.user, remembered.token) == ("ann", TOKENS["ann"])  # a token is remembered, by design
    again = _slicer_session(secured, Login.from_form(user=remembered.user, token=remembered.token), tmp_path)
    assert "segmentation" in again.connect().models


def test_autolabel_sends_the_token(
    secured: ServerProcess, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["autolabel", "--server", secured.url, "--no-wait"]) == 2
    assert "(401)" in capsys.readouterr().err
    assert main(["autolabel", "--server", secured.url, "--no-wait", "--token", TOKENS["ann"]]) == 2
    assert "(403)" in capsys.readouterr().err
    monkeypatch.setenv("ACTIVELABEL_TOKEN", TOKENS["adm"])
    assert main(["autolabel", "--server", secured.url, "--no-wait"]) == 0


def test_the_server_process_refuses_a_public_address_without_users(ct_studies: Path, tmp_path: Path) -> None:
    """The check holds under MONAI Label's own launcher too, where the CLI's check does not run."""
    command = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(DEFAULT_APP_DIR)]
    command += ["--studies", str(ct_studies), "--host", "0.0.0.0", "--port", str(free_port())]
    command += ["--uvicorn_app", "activelabel.server.app:app", "--conf", "state_dir", str(tmp_path / "state")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "error: refusing to serve on 0.0.0.0 without access control" in result.stderr
