"""A project-owned Orthanc PACS: its configuration file, its process and its REST upload.

``make pacs`` and the PACS tests use the same configuration: loopback only (remote access
off, no DICOM port), HTTP basic authentication on, the DICOMweb plugin at ``/dicom-web/``,
and every file (index, storage, log, pid) under one data directory of the caller's choosing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from activelabel.errors import ActiveLabelError
from activelabel.processes import process_running

DICOMWEB_ROOT = "/dicom-web/"
CONFIG_FILE = "orthanc.json"
PID_FILE = "orthanc.pid"
LOG_FILE = "orthanc.log"
DEFAULT_PORT = 8042
DEFAULT_USER = "activelabel"
DEFAULT_PASSWORD = "activelabel"  # loopback-only PACS; override with ACTIVELABEL_PACS_PASSWORD

ORTHANC_BINARIES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
"""Where Debian's ``orthanc`` package installs the server (``/usr/sbin`` is not on every PATH)."""

DICOMWEB_PLUGINS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
)
"""Where Debian's ``orthanc-dicomweb`` package installs the DICOMweb plugin."""

INSTALL_HINT = "install it with `make orthanc-deps` (apt-get install orthanc orthanc-dicomweb)"


class OrthancError(ActiveLabelError, RuntimeError):
    """Orthanc is not installed, did not start, or refused a request; the message says which."""


def find_orthanc() -> Path:
    """The Orthanc executable.

    Raises:
        OrthancError: when Debian's ``orthanc`` package is not installed.
    """
    found = shutil.which("Orthanc")
    candidates = [found] if found else []
    for path in [*candidates, *ORTHANC_BINARIES]:
        if path and os.access(path, os.X_OK):
            return Path(path)
    raise OrthancError(f"the Orthanc executable was not found; {INSTALL_HINT}")


def find_dicomweb_plugin() -> Path:
    """The DICOMweb plugin's shared library.

    Raises:
        OrthancError: when Debian's ``orthanc-dicomweb`` package is not installed.
    """
    for path in DICOMWEB_PLUGINS:
        if Path(path).is_file():
            return Path(path)
    raise OrthancError(f"the Orthanc DICOMweb plugin was not found in {', '.join(DICOMWEB_PLUGINS)}; {INSTALL_HINT}")


@dataclass(frozen=True)
class OrthancConfig:
    """What differs between Orthanc instances: data directory, port and credentials."""

    data_dir: Path
    port: int = DEFAULT_PORT
    user: str = DEFAULT_USER
    password: str = DEFAULT_PASSWORD

    @property
    def url(self) -> str:
        """The REST API's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb base URL (what ``activelabel serve --studies`` takes)."""
        return self.url + DICOMWEB_ROOT.rstrip("/")

    @property
    def auth(self) -> tuple[str, str]:
        return (self.user, self.password)


def config_document(config: OrthancConfig, *, plugin: Path) -> dict[str, Any]:
    """Orthanc's JSON configuration for ``config``, with the DICOMweb plugin at ``plugin``."""
    storage = str((config.data_dir / "db").resolve())
    return {
        "Name": "ActiveLabel PACS",
        "StorageDirectory": storage,
        "IndexDirectory": storage,
        "HttpPort": config.port,
        "HttpServerEnabled": True,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {config.user: config.password},
        "HttpDescribeErrors": True,
        "HttpThreadsCount": 10,
        "KeepAlive": False,  # a client's idle connection would otherwise delay a clean stop by HttpRequestTimeout
        "HttpRequestTimeout": 10,
        "ConcurrentJobs": 1,
        "SaveJobs": False,
        "StableAge": 2,
        "Plugins": [str(plugin)],
        "DicomWeb": {
            "Enable": True,
            "Root": DICOMWEB_ROOT,
            "EnableWado": False,
            "Ssl": False,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
    }


def write_config(config: OrthancConfig, *, plugin: Path | None = None) -> Path:
    """Write ``<data_dir>/orthanc.json`` (readable by its owner only: it holds the password)."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    path = config.data_dir / CONFIG_FILE
    document = config_document(config, plugin=plugin or find_dicomweb_plugin())
    path.write_text(json.dumps(document, indent=2) + "\n")
    path.chmod(0o600)
    return path


@dataclass
class OrthancProcess:
    """A started Orthanc: its configuration and process id."""

    config: OrthancConfig
    pid: int
    process: subprocess.Popen | None = None

    def stop(self, *, timeout: float = 30.0) -> None:
        """Stop Orthanc cleanly (SIGTERM), killing it only if it has not exited after ``timeout``."""
        stop_pid(self.pid, timeout=timeout, child=self.process)
        (self.config.data_dir / PID_FILE).unlink(missing_ok=True)


def _alive(pid: int, child: subprocess.Popen | None) -> bool:
    """Whether ``pid`` runs; an exited child of this process is reaped (a zombie is not alive)."""
    if child is not None:
        return child.poll() is None
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    return process_running(pid)


def stop_pid(pid: int, *, timeout: float, child: subprocess.Popen | None = None) -> None:
    """SIGTERM ``pid``, wait up to ``timeout`` seconds, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid, child):
        time.sleep(0.1)
    if _alive(pid, child):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if child is not None:
        child.wait()


def ping(config: OrthancConfig, *, timeout: float = 2.0) -> bool:
    """Whether Orthanc answers ``/system`` with these credentials."""
    try:
        return requests.get(f"{config.url}/system", auth=config.auth, timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def start_orthanc(config: OrthancConfig, *, timeout: float = 60.0) -> OrthancProcess:
    """Write the configuration, start Orthanc in its own session and wait until it answers.

    Orthanc keeps running after this process exits (``make pacs``); its pid goes to
    ``<data_dir>/orthanc.pid`` and its output to ``<data_dir>/orthanc.log``.

    Raises:
        OrthancError: when Orthanc is missing, exits, or does not answer within ``timeout``.
    """
    binary = find_orthanc()
    path = write_config(config)
    log = config.data_dir / LOG_FILE
    with log.open("ab") as handle:
        process = subprocess.Popen(
            [str(binary), str(path)], stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    (config.data_dir / PID_FILE).write_text(f"{process.pid}\n")
    running = OrthancProcess(config, process.pid, process)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            (config.data_dir / PID_FILE).unlink(missing_ok=True)
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise OrthancError(f"Orthanc exited with {process.returncode} (port {config.port} in use?):\n{tail}")
        if ping(config):
            return running
        time.sleep(0.2)
    running.stop()
    raise OrthancError(f"Orthanc did not answer on {config.url} within {timeout:.0f}s; see {log}")


def running_pid(data_dir: Path) -> int | None:
    """The pid of the Orthanc started from ``data_dir`` if it is still alive."""
    pid_file = data_dir / PID_FILE
    if not pid_file.is_file():
        return None
    pid = int(pid_file.read_text().strip())
    return pid if _alive(pid, None) else None


def stop_orthanc(data_dir: Path, *, timeout: float = 30.0) -> bool:
    """Stop the Orthanc whose pid file is in ``data_dir``; False when none was running."""
    pid_file = data_dir / PID_FILE
    if not pid_file.is_file():
        return False
    pid = int(pid_file.read_text().strip())
    running = _alive(pid, None)
    if running:
        stop_pid(pid, timeout=timeout)
    pid_file.unlink(missing_ok=True)
    return running


def dicom_files(paths: Iterable[Path]) -> list[Path]:
    """Every DICOM file (by its ``DICM`` preamble) in ``paths``, folders searched recursively."""
    found: list[Path] = []
    for path in paths:
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for candidate in candidates:
            with candidate.open("rb") as handle:
                if handle.read(132)[128:] == b"DICM":
                    found.append(candidate)
    return found


def upload(config: OrthancConfig, paths: Iterable[Path], *, timeout: float = 60.0) -> list[str]:
    """POST every DICOM file under ``paths`` to Orthanc's ``/instances``; returns Orthanc's instance ids.

    Raises:
        OrthancError: when Orthanc refuses a file (the message names it and Orthanc's answer).
    """
    ids = []
    with requests.Session() as session:
        session.auth = config.auth
        for path in dicom_files(paths):
            answer = session.post(f"{config.url}/instances", data=path.read_bytes(), timeout=timeout)
            if answer.status_code != 200:
                raise OrthancError(f"Orthanc refused {path} ({answer.status_code}): {answer.text[:200]}")
            ids.append(str(answer.json()["ID"]))
    return ids
