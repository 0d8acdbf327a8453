"""The production profile's MLflow tracking server: `mlflow server` on a Postgres backend store,
serving the artifacts itself from one folder (`--artifacts-destination`), so every machine
that trains, tunes or builds a bundle reads and writes the same runs, models and aliases
through HTTP, and none needs the artifact folder mounted.

    mlflow server --backend-store-uri postgresql+psycopg://USER@HOST:5432/DB \\
        --artifacts-destination /srv/mlflow/artifacts --host 127.0.0.1 --port 5000 --workers 1

`server_command` spells that command (the one the tests start, and the one an error names);
`start` runs it in the background in a process group of its own, `stop` ends the whole group
(MLflow's launcher starts uvicorn beneath it). The server's own telemetry is off and its job
runner (GenAI scorers, huey consumers: seven processes we do not use) is not started
(`MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from nba.errors import NbaError
from nba.settings import TELEMETRY_OFF, Settings

# What the server process needs beyond telemetry off: no job runner (it would start seven
# more processes), quiet logs.
SERVER_ENV: dict[str, str] = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
}


class TrackingServerError(NbaError):
    """The tracking server did not start or did not answer in time."""

    exit_code = 3


def backend_uri(dsn: str) -> str:
    """A Postgres DSN as the SQLAlchemy URL MLflow's store takes (psycopg 3 driver)."""
    return "postgresql+psycopg://" + dsn.removeprefix("postgresql://") if dsn.startswith("postgresql://") else dsn


def server_command(backend: str, artifacts: Path, *, host: str = "127.0.0.1", port: int = 5000,
                   workers: int = 1) -> list[str]:
    """The `mlflow server` command line: the backend store, the served artifact folder, the address."""
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
            "--artifacts-destination", str(Path(artifacts).resolve()), "--serve-artifacts",
            "--host", host, "--port", str(port), "--workers", str(workers)]


def command_for(settings: Settings, uri: str) -> str:
    """The command that would start the server `uri` names, from the settings (the Postgres DSN,
    `<mlflow_dir>/artifacts`), as a person types it."""
    parts = urlsplit(uri)
    backend = re.sub(r"(://[^:/@]+:)[^@/]+@", r"\1***@", backend_uri(settings.postgres_dsn))  # no password
    cmd = server_command(backend, settings.mlflow_path / "artifacts",
                         host=parts.hostname or "127.0.0.1", port=parts.port or 5000)
    return " ".join(["mlflow", *cmd[3:]])


@dataclass
class TrackingServer:
    uri: str
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        stop(self.proc)


def start(backend: str, artifacts: Path, *, port: int, host: str = "127.0.0.1", log_file: Path,
          timeout: float = 120.0) -> TrackingServer:
    """Start `mlflow server` and wait until `/health` answers; the log's tail in the error if not."""
    Path(artifacts).mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **TELEMETRY_OFF, **SERVER_ENV}
    out = open(log_file, "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = subprocess.Popen(server_command(backend, artifacts, host=host, port=port), env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=str(Path(artifacts).parent))
    finally:
        out.close()
    uri = f"http://{host}:{port}"
    try:
        wait_ready(uri, proc, log_file, timeout)
    except BaseException:
        stop(proc)
        raise
    return TrackingServer(uri, proc, Path(log_file))


def wait_ready(uri: str, proc: subprocess.Popen, log_file: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TrackingServerError(f"mlflow server for {uri} exited with code {proc.returncode}: "
                                      f"{_tail(log_file)}")
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as resp:  # noqa: S310 - loopback
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TrackingServerError(f"mlflow server for {uri} did not answer /health within {timeout:.0f} s: "
                              f"{_tail(log_file)}")


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM to the server's process group (the launcher and uvicorn), SIGKILL after `timeout`."""
    pgid = proc.pid  # start_new_session: the launcher leads its own group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while group_alive(pgid) and time.monotonic() < deadline:  # uvicorn outlives the launcher briefly
        time.sleep(0.2)
    if group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        while group_alive(pgid):
            time.sleep(0.1)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is still there (zombies of our own child aside)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - not ours
        return True
    # the launcher may be a zombie we have not reaped: that is not a live process
    for pid in _pids_in_group(pgid):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            return True
    return False


def _pids_in_group(pgid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            out.append(int(entry.name))
    return out


def _tail(log_file: Path, lines: int = 5) -> str:
    try:
        text = Path(log_file).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
