"""MLflow connection at the edge: configuration, the client, clear errors, the sqlite store lock.

* ``configure()``: telemetry off, tracking URI (embedded ``sqlite:///<IDAP_WORKDIR>/mlflow.db`` or
  ``MLFLOW_TRACKING_URI``), the experiment, and HTTP timeout / retry defaults so a dead server fails in
  seconds with a ``TrackingError`` naming it, instead of retrying for minutes.
* ``clear_errors`` / ``fail_fast``: "server unreachable" errors in words; best-effort calls without retries.
* ``store_lock``: with the embedded sqlite store, an ``fcntl`` lock on a file next to the database, held
  while the store is created and while a model is registered or promoted (``components.services.registry``).
* small value helpers shared by the run tree (``components.services.tracking``) and the registry.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import getpass
import json
import math
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from components.services.settings import Settings, load_settings, telemetry_off

HTTP_BACKOFF_FACTOR = "1"  # seconds: 1, 2, 4 ... between retries of a failing server
LOCK_TIMEOUT_S = 600
# The MLflow UI opens an experiment of this kind on its runs table (training runs), not on the GenAI
# traces overview it picks for experiments of no declared kind.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
MAX_PARAM_CHARS = 6000
MAX_TAG_CHARS = 5000

_experiments: dict[tuple[str, str], str] = {}


class TrackingError(RuntimeError):
    """MLflow cannot be reached or refused a request; the message names the tracking URI."""


# --- configuration ------------------------------------------------------------------------------------------


def configure(settings: Settings | None = None) -> Settings:
    """Point MLflow at the configured store and experiment (idempotent, cheap after the first call).

    Sets ``MLFLOW_HTTP_REQUEST_TIMEOUT`` / ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` from the settings (defaults
    30 s / 3) and a 1 s backoff factor, so a dead server fails within seconds. A new experiment stores its
    artifacts under ``settings.artifact_root``; against a tracking server without ``IDAP_ARTIFACT_ROOT``
    the server's own (proxied) artifact store is used instead of a client-local directory.
    """
    import mlflow

    settings = settings or load_settings()
    telemetry_off()
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(settings.http_timeout)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(settings.http_retries)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", HTTP_BACKOFF_FACTOR)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars in step logs
    # MLflow's own S3 client (artifact store on S3) takes its retry policy from these.
    os.environ.setdefault("AWS_RETRY_MODE", "standard")
    os.environ.setdefault("AWS_MAX_ATTEMPTS", "3")
    if settings.s3_endpoint:  # MLflow's S3 client reads its own variable: the same endpoint as ours
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", settings.s3_endpoint)
    if settings.embedded:
        settings.workdir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    db = sqlite_path(settings)
    # Steps starting at once on a fresh sqlite store would race to create its tables.
    with store_lock(settings) if db is not None and not db.exists() else contextlib.nullcontext():
        get_experiment_id(settings)
    return settings


def get_experiment_id(settings: Settings) -> str:
    from mlflow.exceptions import MlflowException

    key = (settings.tracking_uri, settings.experiment)
    if key in _experiments:
        return _experiments[key]
    client = get_client(settings)
    with clear_errors(settings.tracking_uri):
        experiment = client.get_experiment_by_name(settings.experiment)
        if experiment is None:
            try:
                experiment_id = client.create_experiment(settings.experiment, artifact_location=_artifact_location(settings),
                                                         tags=EXPERIMENT_TAGS)
            except MlflowException as error:  # created meanwhile by a concurrent step
                experiment = client.get_experiment_by_name(settings.experiment)
                if experiment is None:
                    raise error from None
                experiment_id = experiment.experiment_id
        elif experiment.lifecycle_stage != "active":
            raise TrackingError(f"experiment {settings.experiment!r} is deleted in {settings.tracking_uri}: restore it "
                                "(mlflow experiments restore) or set IDAP_EXPERIMENT to another name")
        else:
            experiment_id = experiment.experiment_id
            for tag, value in EXPERIMENT_TAGS.items():  # experiments made before the tag existed
                if experiment.tags.get(tag) is None:
                    client.set_experiment_tag(experiment_id, tag, value)
    _experiments[key] = experiment_id
    return experiment_id


def _artifact_location(settings: Settings) -> str | None:
    remote = settings.tracking_uri.startswith(("http://", "https://"))
    if remote and settings.artifact_root == (settings.workdir / "mlartifacts").as_uri() and not os.environ.get("IDAP_ARTIFACT_ROOT"):
        return None  # the server's artifact store (proxied to S3 in infra/), not a directory on this pod
    return settings.artifact_root


def get_client(settings: Settings | None = None):
    from mlflow import MlflowClient

    uri = settings.tracking_uri if settings else None
    return MlflowClient(tracking_uri=uri) if uri else MlflowClient()


def is_unreachable(error: BaseException) -> bool:
    text = str(error)
    return "API request to" in text and ("failed with exception" in text or "timeout exception" in text)


@contextlib.contextmanager
def clear_errors(uri: str | None = None) -> Iterator[None]:
    """Turn "server unreachable" MLflow errors into a TrackingError that names the server and the knobs."""
    try:
        yield
    except Exception as error:
        if type(error).__module__.startswith(("botocore", "boto3", "s3transfer")):
            endpoint = load_settings().s3_endpoint or "AWS S3"
            raise TrackingError(f"the MLflow artifact store on S3 ({endpoint}) failed after "
                                f"{os.environ.get('AWS_MAX_ATTEMPTS')} attempt(s): {type(error).__name__}: {error}") from error
        if isinstance(error, TrackingError) or not is_unreachable(error):
            raise
        if not uri:
            import mlflow

            uri = mlflow.get_tracking_uri()
        raise TrackingError(
            f"the MLflow tracking server {uri} is unreachable or failing "
            f"(MLFLOW_HTTP_REQUEST_TIMEOUT={os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT')} s, "
            f"MLFLOW_HTTP_REQUEST_MAX_RETRIES={os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES')}): {error}"
        ) from error


@contextlib.contextmanager
def fail_fast() -> Iterator[None]:
    """No retries and a short timeout: for best-effort calls after the server was found unreachable."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(min(5, int(saved["MLFLOW_HTTP_REQUEST_TIMEOUT"] or 5)))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --- the store lock -----------------------------------------------------------------------------------------


def sqlite_path(settings: Settings) -> Path | None:
    if not settings.tracking_uri.startswith("sqlite:///"):
        return None
    return Path(settings.tracking_uri[len("sqlite:///"):].split("?", 1)[0])


@contextlib.contextmanager
def store_lock(settings: Settings) -> Iterator[None]:
    """An exclusive fcntl lock next to a sqlite database (creation, registration, promotion); a no-op for
    servers, where the compare-and-set loop does the job."""
    db = sqlite_path(settings)
    if db is None:
        yield
        return
    path = db.with_name(f"{db.name}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TrackingError(f"timed out after {LOCK_TIMEOUT_S} s waiting for the store lock {path}") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --- small helpers ------------------------------------------------------------------------------------------


@functools.cache
def code_version() -> str:
    """``git rev-parse HEAD`` of this checkout, else ``$IDAP_CODE_VERSION``, else "unknown"."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("IDAP_CODE_VERSION") or "unknown"


def source_tags() -> dict:
    return {"mlflow.user": user(), "mlflow.source.name": "idap"}


def user() -> str:
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return "unknown"


def as_recipe(recipe):
    from idap.prune.config import Recipe

    return recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe)


def is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def param_value(value) -> str:
    return clip(json.dumps(value) if isinstance(value, dict | list | tuple) else str(value), MAX_PARAM_CHARS)


def str_dict(values: dict) -> dict[str, str]:
    return {str(k): clip(str(v), MAX_TAG_CHARS) for k, v in values.items() if v is not None}


def clip(text: str, limit: int) -> str:
    """``text`` within MLflow's length ``limit``, marked with "..." where cut."""
    return text if len(text) <= limit else text[:limit - 3] + "..."
