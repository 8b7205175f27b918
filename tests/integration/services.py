"""Start and stop real local services for tests: moto S3, a private PostgreSQL cluster, an MLflow server.

Every service binds 127.0.0.1 on a free port, runs in its own process group (so stopping it also stops
its workers) and logs to a file whose tail is shown when it fails to come up.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "RAY_USAGE_STATS_ENABLED": "0"}
# Dummy keys for moto; real deployments take credentials from boto3's chain.
MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    url: str
    log: Path
    env: dict = field(default_factory=dict)
    cleanup: list = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    stop_signal: int = signal.SIGTERM
    startup_s: float | None = None  # seconds from spawn to ready

    def stop(self) -> None:
        stop_process_group(self.process, sig=self.stop_signal)
        for path in self.cleanup:
            shutil.rmtree(path, ignore_errors=True)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (connection refused at once)."""
    return free_port()


def stop_process_group(process: subprocess.Popen, timeout: float = 10, sig: int = signal.SIGTERM) -> None:
    """Stop a service started by _spawn (its own session): ``sig`` to the group, SIGKILL after ``timeout``."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)


def _spawn(name: str, cmd: list[str], log: Path, env: dict | None = None, **kw) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **TELEMETRY_OFF, **(env or {})}, start_new_session=True, **kw)


def _wait(service: Service, ready, timeout: float) -> Service:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            service.stop()
            raise RuntimeError(f"{service.name} exited with {service.process.returncode}:\n{service.log_tail()}")
        with contextlib.suppress(Exception):
            if ready():
                service.startup_s = round(time.monotonic() - service.started, 1)
                return service
        time.sleep(0.2)
    service.stop()
    raise RuntimeError(f"{service.name} did not come up within {timeout:.0f} s:\n{service.log_tail()}")


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status < 500


# --- moto S3 ------------------------------------------------------------------------------------------------


def start_moto(log_dir: Path, timeout: float = 30) -> Service:
    """An in-memory S3 endpoint (moto server) on 127.0.0.1; ``env`` points boto3 and MLflow at it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = _spawn("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                     log_dir / "moto.log")
    env = {**MOTO_CREDENTIALS, "AWS_ENDPOINT_URL": url, "MLFLOW_S3_ENDPOINT_URL": url}
    return _wait(Service("moto S3 server", process, url, log_dir / "moto.log", env), lambda: _http_ok(url), timeout)


def create_bucket(endpoint: str, bucket: str) -> None:
    """Create ``bucket`` on the endpoint (a bucket this session already made is kept)."""
    import boto3

    s3 = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                               region_name="us-east-1").client("s3", endpoint_url=endpoint)
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=bucket)


S3_ENV_CLEARED = ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL", "AWS_MAX_ATTEMPTS")


def use_s3(monkeypatch, server: Service, **overrides: str) -> None:
    """Point boto3 and MLflow at ``server`` (a moto Service) with its test credentials for one test; a
    profile, other endpoints and retry settings of the machine are cleared first."""
    for key in S3_ENV_CLEARED:
        monkeypatch.delenv(key, raising=False)
    for key, value in {**server.env, **overrides}.items():
        monkeypatch.setenv(key, value)


# --- PostgreSQL ---------------------------------------------------------------------------------------------


def postgres_bin() -> Path | None:
    """The PostgreSQL server binaries (version 15 preferred), or None when not installed."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: (("/15/" not in p), p))
    return Path(candidates[0]).parent if candidates else None


def start_postgres(log_dir: Path, timeout: float = 30) -> Service:
    """A private PostgreSQL cluster on 127.0.0.1 (trust auth, fsync off) with a database ``mlflow``.

    initdb refuses to run as root, so as root the cluster belongs to the ``postgres`` user, in a
    temporary directory that user can write.
    """
    import psycopg2

    bindir = postgres_bin()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin")
    as_user: dict = {}
    base = Path(tempfile.mkdtemp(prefix="idap-pg-"))
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    data, sockets = base / "data", base / "sockets"
    log = log_dir / "postgres.log"
    init = subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                           "--no-locale", "--no-sync"], capture_output=True, text=True, cwd=base,
                          env={**os.environ, "LC_ALL": "C"}, **as_user)
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"initdb failed ({init.returncode}):\n{init.stdout[-2000:]}\n{init.stderr[-2000:]}")
    if as_user:
        subprocess.run(["install", "-d", "-o", "postgres", "-g", "postgres", str(sockets)], check=True)
    else:
        sockets.mkdir()
    port = free_port()
    process = _spawn("postgres", [str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                                  "-k", str(sockets), "-c", "fsync=off", "-c", "synchronous_commit=off",
                                  "-c", "full_page_writes=off", "-c", "max_connections=100"],
                     log, cwd=base, **as_user)
    service = Service("PostgreSQL", process, f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow", log,
                      cleanup=[base], stop_signal=signal.SIGINT)  # SIGINT: "fast" shutdown, no waiting for clients

    def ready() -> bool:
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=2)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = 'mlflow'")
            if cur.fetchone() is None:
                cur.execute("CREATE DATABASE mlflow")
        conn.close()
        return True

    return _wait(service, ready, timeout)


# --- MLflow server ------------------------------------------------------------------------------------------


def start_mlflow_server(backend_uri: str, artifacts_destination: str, s3_env: dict, log_dir: Path,
                        timeout: float = 90) -> Service:
    """``mlflow server`` against ``backend_uri`` with artifacts proxied to ``artifacts_destination`` (S3),
    as infra/base/mlflow.yaml runs it; waits for ``/health``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow_bin), "server", "--backend-store-uri", backend_uri, "--artifacts-destination",
           artifacts_destination, "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**s3_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = _spawn("mlflow server", cmd, log_dir / "mlflow-server.log", env)
    return _wait(Service("MLflow server", process, url, log_dir / "mlflow-server.log", env),
                 lambda: _http_ok(f"{url}/health"), timeout)
