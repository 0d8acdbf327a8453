"""Running the decision service: `nba serve`, the quickstart, the tests and the benchmarks start
the built Bento the same way (a `bentoml serve` process on localhost) and wait for `/readyz`."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nba.errors import NbaError
from nba.settings import TELEMETRY_OFF, Settings


class ServerError(NbaError):
    """The decision service did not start or did not become ready."""

    exit_code = 3


def bento_tag(settings: Settings) -> str:
    from nba.serving.bundle import read_manifest

    manifest = read_manifest(settings.bundle_dir)
    tag = manifest.get("bento")
    if not tag:
        raise ServerError(f"the bundle {settings.bundle_dir} has no Bento: run `nba bundle build`")
    return str(tag)


def server_env(settings: Settings, workers: int | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(TELEMETRY_OFF)
    env.update({
        "BENTOML_HOME": str(settings.bentoml_home),
        "NBA_HOME": str(settings.home),
        "NBA_WORK_DIR": str(settings.work),
        "NBA_MLFLOW_DIR": str(settings.mlflow_path),
        "NBA_PROFILE": settings.profile,
        "NBA_SERVE_WORKERS": str(workers or settings.serve_workers),
        "NBA_SERVE_METRICS": "1" if settings.serve_metrics else "0",
        "NBA_SERVE_BATCH": str(settings.serve_batch),
        "NBA_SERVE_KEEPALIVE_REQUESTS": str(settings.serve_keepalive_requests),
        "NBA_SERVE_GC_FREEZE": "1" if settings.serve_gc_freeze else "0",
        "NBA_REDIS_URL": settings.redis_url,
        "NBA_REDIS_PREFIX": settings.redis_prefix,
        "NBA_POSTGRES_DSN": settings.postgres_dsn,
        "OMP_NUM_THREADS": "1",  # one XGBoost thread per worker: workers x threads <= cores
    })
    if settings.policy_store:
        env["NBA_POLICY_STORE"] = settings.policy_store
    if settings.serve_commit_threads is not None:
        env["NBA_SERVE_COMMIT_THREADS"] = str(settings.serve_commit_threads)
    if settings.serve_bundle is not None:
        env["NBA_BUNDLE_DIR"] = str(settings.path(settings.serve_bundle))
    if settings.data_dir is not None:
        env["NBA_DATA_DIR"] = str(settings.path(settings.data_dir))
    # the gate's settings (nba.serving.gate), when these settings carry them
    if settings.api_keys:
        env["NBA_API_KEYS"] = settings.api_keys
    if settings.api_keys_file is not None:
        env["NBA_API_KEYS_FILE"] = str(settings.path(settings.api_keys_file))
    if settings.admin_token:
        env["NBA_ADMIN_TOKEN"] = settings.admin_token
    env.update({"NBA_RATE_LIMIT": repr(settings.rate_limit), "NBA_RATE_BURST": str(settings.rate_burst),
                "NBA_MAX_BODY_BYTES": str(settings.max_body_bytes),
                "NBA_MAX_BATCH_BODY_BYTES": str(settings.max_batch_body_bytes)})
    if settings.rate_limit_store:
        env["NBA_RATE_LIMIT_STORE"] = settings.rate_limit_store
    env.update(extra or {})
    return env


WORKERS_ATTR = "nba_workers"  # set by `start` on the server's process: how many workers it runs


def start(settings: Settings, *, host: str = "127.0.0.1", port: int = 3000, workers: int | None = None,
          log_file: Path | None = None, target: str | None = None, extra_env: dict[str, str] | None = None
          ) -> subprocess.Popen:
    """Start `bentoml serve` for the built Bento (or `target`) in the background. A
    non-loopback `host` without API keys is refused here, before anything starts."""
    from nba.serving.auth import check_bind

    check_bind(settings.model_copy(update={"api_keys": (extra_env or {}).get("NBA_API_KEYS", settings.api_keys)}),
               host)
    target = target or bento_tag(settings)
    cmd = [sys.executable, "-m", "bentoml", "serve", target, "--host", host, "--port", str(port)]
    out = open(log_file, "ab") if log_file else None  # noqa: SIM115 - handed to the child; None: the console
    env = server_env(settings, workers, extra_env)
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=str(settings.home),
                            start_new_session=True)
    setattr(proc, WORKERS_ATTR, int(env["NBA_SERVE_WORKERS"]))  # noqa: B010 - what wait_ready waits for
    return proc


def start_worker(settings: Settings, *, log_file: Path | None = None, args: tuple[str, ...] = (),
                 extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start the outbox's delivery worker (`nba activation run`) in the background, beside the
    service: a process of its own, so a slow receiver never slows a decision."""
    cmd = [sys.executable, "-m", "nba", "activation", "run", *args]
    out = open(log_file, "ab") if log_file else None  # noqa: SIM115 - handed to the child; None: the console
    return subprocess.Popen(cmd, env=server_env(settings, extra=extra_env), stdout=out, stderr=subprocess.STDOUT,
                            cwd=str(settings.home), start_new_session=True)


def stop_worker(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM: the worker settles its batch and gives back its leases; SIGKILL after `timeout`
    (nothing is lost either way: its leases expire and the messages are sent again)."""
    import signal

    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        proc.wait(timeout=timeout)


def readiness(url: str, timeout: float = 2.0) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=timeout) as resp:  # noqa: S310 - loopback
            return resp.status, _body(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _body(exc.read())


def _body(raw: bytes) -> dict[str, Any]:
    """A readiness body: ours is JSON; a plain BentoML service answers text."""
    try:
        body = json.loads(raw or b"{}")
    except json.JSONDecodeError:
        body = None
    return body if isinstance(body, dict) else {"detail": raw.decode(errors="replace").strip()}


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 120.0,
               accept_unready: bool = False, workers: int | None = None) -> dict[str, Any]:
    """Poll /readyz until it answers 200 (or, with `accept_unready`, any answer of the engine).
    Each worker builds its own engine, and one that is still building answers 503 "starting":
    the server is ready once `workers` workers (told apart by the pid in the body; None: as many
    as `start` gave `proc`) have answered 200, so no caller meets a starting worker afterwards."""
    if workers is None:
        workers = getattr(proc, WORKERS_ATTR, 1)
    deadline = time.monotonic() + timeout
    last: Any = "no answer"
    ready: set[Any] = set()
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"the decision service exited with code {proc.returncode} before it was ready")
        try:
            status, body = readiness(url)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            last = exc
        else:
            if accept_unready and "checks" in body and "engine" not in body["checks"]:
                return body
            if status == 200:
                ready.add(body.get("worker"))
                if len(ready) >= workers or "worker" not in body:
                    return body
            last = body
        time.sleep(0.05 if ready else 0.3)  # once one is ready, the others are close: look often
    if ready:
        last = f"{len(ready)} of its {workers} workers ready; the last answer: {last}"
    raise ServerError(f"the decision service at {url} was not ready after {timeout:.0f} s: {last}")


def server_processes(proc: subprocess.Popen) -> list[int]:
    """The server's process and its workers. BentoML starts each worker in a session of its own,
    so a signal to the server's process group does not reach them."""
    import psutil

    try:
        return [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def kill(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGKILL the server and every worker at once (a crash, or a server that would not stop)."""
    import signal

    for pid in server_processes(proc):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=timeout)


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop the server and its workers: SIGTERM (BentoML stops its workers), then SIGKILL to
    all of them if that takes longer than `timeout`."""
    import signal

    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        kill(proc, timeout)


def example_request(settings: Settings) -> tuple[int, str]:
    """A customer with fresh features and the moment the online features are for: the newest
    snapshot (for the simulated bank, a day in its past; a live channel omits the timestamp)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(settings.feast_repo / "data" / "profile.parquet", columns=["customer_id", "event_timestamp"])
    newest = pc.max(table.column("event_timestamp")).as_py()
    ids = table.filter(pc.equal(table.column("event_timestamp"), newest)).column("customer_id")
    return int(ids[0].as_py()), (newest.replace(hour=9)).strftime("%Y-%m-%dT%H:%M:%SZ")


def announce(url: str, customer: int, timestamp: str, echo: Callable[[str], None]) -> None:
    echo(f"decision service:  {url}")
    echo(f"OpenAPI:           {url}/docs.json  (Swagger UI: {url}/)")
    echo(f"readiness:         curl -s {url}/readyz")
    body = json.dumps({"customer_id": customer, "channel": "web", "k": 3, "timestamp": timestamp})
    echo(f"a decision:        curl -s -X POST {url}/decide -H 'Content-Type: application/json' -d '{body}'")
    echo(f"an outcome:        curl -s -X POST {url}/respond -H 'Content-Type: application/json' "
         "-d '{\"decision_id\": \"<from the decision>\", \"action_id\": \"<its action>\", \"outcome\": \"accepted\", "
         "\"value\": 10}'")
    echo("(the timestamp is the simulated bank's newest snapshot day: its features are fresh then; a live "
         "channel omits it and decides now)")


def serve(settings: Settings, *, host: str = "127.0.0.1", port: int = 3000, workers: int | None = None,
          echo: Callable[[str], None] = print, activation: bool = True) -> None:
    """Start the service and (with `activation`) the outbox's delivery worker beside it, print
    where they are, and keep them running until interrupted (Ctrl-C or SIGTERM: either way both
    are stopped with it)."""
    import signal

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # Both set here: a process started in the background by a non-interactive shell inherits
    # SIGINT ignored, and Ctrl-C (or a test's SIGINT) would leave the server running.
    previous = {sig: signal.signal(sig, terminate) for sig in (signal.SIGTERM, signal.SIGINT)}
    proc = start(settings, host=host, port=port, workers=workers)
    worker = None
    url = f"http://{host}:{port}"
    try:
        wait_ready(url, proc)
        if activation:
            worker = start_worker(settings)
            echo(f"delivery worker:   pid {worker.pid} (nba activation run; `nba activation status` shows the outbox)")
        announce(url, *example_request(settings), echo)
        echo("press Ctrl-C to stop")
        proc.wait()
    except KeyboardInterrupt:
        echo("stopping")
    finally:
        if worker is not None:
            stop_worker(worker)
        stop(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if proc.returncode not in (0, -15, None):
        raise ServerError(f"the decision service exited with code {proc.returncode}")
