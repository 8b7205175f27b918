"""Ray at the edge: start or attach to Ray, check an address, the runtime env and Tune's storage.

* :func:`start_ray`: local Ray on 127.0.0.1 by default, or an existing cluster (``address`` / ``RAY_ADDRESS``),
  probed first so that a dead address fails in seconds; a Ray Client connection whose server the head failed
  to start is retried with a new connection.
* :func:`cluster_env`: what work on a cluster gets as its runtime environment (never a credential).
* :func:`tune_storage`: where Tune keeps trial results and checkpoints (local, or S3 for a cluster).

The search itself is :mod:`components.services.tune`; a search submitted as a Ray job is :mod:`components.services.ray_job`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from components.services.settings import telemetry_off

__all__ = ["SearchError", "cluster_env", "probe", "start_ray", "tune_storage"]


class SearchError(RuntimeError):
    """A search that cannot start or resume (experiment directory, Ray)."""


def start_ray(address: str | None = None, *, num_cpus: int | None = None, log_to_driver: bool = False) -> bool:
    """Start (or attach to) Ray; returns True when this call started it (the caller shuts it down).

    Local by default: ``address="local"``, no dashboard, bound to 127.0.0.1, a private temp dir, token
    auth off (``RAY_AUTH_MODE=disabled``: nothing listens beyond this machine), usage stats off.
    ``address`` (or ``RAY_ADDRESS``) attaches to an existing cluster instead, e.g. the RayCluster in infra/:
    probed first (:func:`probe`, a dead address fails in seconds), with :func:`cluster_env` as the runtime env.
    """
    import ray

    telemetry_off()
    # Tune's console tables and its checkpoint-frequency warnings are noise next to idap's own summary
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict[str, Any] = {"address": address, "logging_level": logging.WARNING, "log_to_driver": log_to_driver}
    if address not in ("local", "auto"):
        probe(address)
        if not os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):  # (a Ray job's driver has the job's runtime env)
            # under Ray Client (ray://) Tune's driver and its MLflow callback run on the head: same settings as here
            kwargs["runtime_env"] = {"env_vars": cluster_env()}
    if address == "local":  # (an existing cluster refuses resource and dashboard arguments: it has its own)
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # short: Ray's unix sockets live under it and a socket path may not exceed ~107 characters
        kwargs.update(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                      _temp_dir=tempfile.mkdtemp(prefix="idap-ray-"))
    attempt = 1
    while True:
        try:
            ray.init(**kwargs)
            return True
        except Exception as error:
            # The Ray Client's proxy on the head starts one server process per connection; on a busy head
            # that process can fail to start (seen once on a loaded 2-core CI machine). A new connection gets
            # a new server: try again a few times. Any other failure is final at once.
            transient = address.startswith("ray://") and any(t in str(error) for t in CLIENT_SERVER_TRANSIENT)
            if not transient or attempt == CLIENT_ATTEMPTS:
                after = (f" (after {attempt} attempts; the head's ray_client_server_*.err logs, under "
                         "/tmp/ray/session_latest/logs there, say why)") if attempt > 1 else ""
                raise SearchError(f"cannot start or reach Ray at {address!r}: {type(error).__name__}: {error}"
                                  f"{after}") from error
            logging.getLogger(__name__).warning(
                "Ray Client at %s: the head's client server did not start (attempt %d of %d); retrying",
                address, attempt, CLIENT_ATTEMPTS)
            with contextlib.suppress(Exception):
                ray.shutdown()
            time.sleep(CLIENT_RETRY_PAUSE_S * attempt)
            attempt += 1


CLIENT_ATTEMPTS = 3
CLIENT_RETRY_PAUSE_S = 3.0
# What the head's Ray Client proxy answers when the per-connection server process it spawned died or never
# answered (ray/util/client/server/proxier.py): transient on a busy head, unlike a refused connection.
CLIENT_SERVER_TRANSIENT = ("Starting Ray client server failed", "Proxy failed to Connect to backend")


# What a pipeline step is configured with (pipelines/_platform.py) and the cluster side of a search needs too
# (a Ray job's driver, Tune's driver under Ray Client): never a credential, which Ray would show to anyone who
# reaches the dashboard. The RayCluster's pods get the credentials from the same Secrets as the steps.
CARRIED_ENV = ("MLFLOW_TRACKING_URI", "IDAP_EXPERIMENT", "IDAP_ARTIFACT_ROOT", "IDAP_BUCKET", "AWS_ENDPOINT_URL",
               "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION",
               "AWS_MAX_ATTEMPTS", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_USERNAME",
              "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def cluster_env() -> dict[str, str]:
    """The runtime environment's variables for work on a cluster: :data:`CARRIED_ENV` as set in this process,
    telemetry off, Ray's token auth as here (default disabled, as infra/ runs it); no credential."""
    from components.services.settings import TELEMETRY_OFF

    env = {k: os.environ[k] for k in CARRIED_ENV if os.environ.get(k) and k not in SECRET_ENV}
    return {**TELEMETRY_OFF, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE") or "disabled", **env}


PROBE_TIMEOUT_S = 3.0
DEFAULT_PORTS = {"ray": 10001, "http": 8265, "https": 443, "": 6379}  # Ray Client, dashboard / Jobs API, GCS


def probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> tuple[str, int]:
    """Check that something listens at a Ray address (``host:port`` = the GCS, ``ray://`` = Ray Client,
    ``http(s)://`` = the dashboard) with one TCP connect, so that a dead address fails in seconds: ``ray.init``
    and the Jobs client would retry it for minutes. Returns (host, port).

    Raises:
        SearchError: nothing answers, naming the address and what to check.
    """
    import socket
    from urllib.parse import urlsplit

    scheme = address.split("://", 1)[0] if "://" in address else ""
    if scheme not in DEFAULT_PORTS:
        raise SearchError(f"Ray address {address!r}: unknown scheme {scheme!r}; give host:port (the GCS, e.g. "
                          "127.0.0.1:6379), ray://host:10001 (Ray Client) or http://host:8265 (the Jobs API)")
    parts = urlsplit(address if scheme else f"gcs://{address}")
    try:
        host, port = parts.hostname, parts.port or DEFAULT_PORTS[scheme]
    except ValueError as error:
        raise SearchError(f"Ray address {address!r} is not host:port ({error})") from None
    if not host:
        raise SearchError(f"Ray address {address!r} names no host")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return host, port
    except OSError as error:
        reason = "timed out" if isinstance(error, TimeoutError) else (error.strerror or type(error).__name__)
        raise SearchError(f"cannot reach the Ray cluster at {address!r}: connecting to {host}:{port} failed "
                          f"({reason}, {timeout:g} s limit). Is the RayCluster up (kubectl -n idap get raycluster) "
                          "and, from outside the cluster, the port-forward running (infra/README.md)?") from None


def tune_storage(storage: str | None, exp_dir: Path):
    """Where Tune keeps trial results and checkpoints: ``(storage_path, pyarrow filesystem or None)``.

    None: beside the experiment directory (one machine, or a volume every node mounts). ``s3://bucket/prefix``:
    the object store, through pyarrow with the same endpoint / credentials as boto3 (``AWS_*``) — what a
    search needs when trials run on other machines (a worker cannot write a checkpoint to the driver's disk).
    """
    from components.services import storage as _storage

    if not storage:
        return str(exp_dir.parent), None
    if not _storage.is_s3(storage):
        return str(Path(storage).absolute()), None
    from urllib.parse import urlsplit

    import pyarrow.fs

    bucket, key = _storage.parse_s3(storage)
    kwargs: dict[str, Any] = {"region": os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
                              or "us-east-1", "connect_timeout": 3, "request_timeout": 60}
    endpoint = _storage.endpoint_url()
    if endpoint:
        parts = urlsplit(endpoint)
        kwargs.update(endpoint_override=parts.netloc or parts.path, scheme=parts.scheme or "https")
    return f"{bucket}/{key.strip('/')}".rstrip("/"), pyarrow.fs.S3FileSystem(**kwargs)
