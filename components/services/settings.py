"""Configuration of the edge, read from the environment in one place, with clear errors.

Embedded defaults make everything run on a laptop: a work directory under the current directory,
a sqlite MLflow database in it, local Ray. Setting the variables below points the same code at a
cluster (Kubeflow, an MLflow server, S3/MinIO, a Ray cluster). Credentials are never read here:
boto3 and MLflow take them from their own environment variables or Kubernetes secrets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "RAY_USAGE_STATS_ENABLED": "0"}
DEFAULT_IMAGE = "ghcr.io/idap/idap:0.1.0"


class SettingsError(ValueError):
    """An environment variable holds a value the edge cannot use."""


def telemetry_off() -> None:
    """Switch off MLflow / Ray usage reporting for this process and its children."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)


@dataclass(frozen=True)
class Settings:
    workdir: Path  # IDAP_WORKDIR: run outputs, sqlite MLflow db, local artifacts (default ./.idap)
    tracking_uri: str  # MLFLOW_TRACKING_URI, default sqlite:///<workdir>/mlflow.db
    artifact_root: str  # IDAP_ARTIFACT_ROOT: where new MLflow experiments store artifacts (default <workdir>/mlartifacts)
    experiment: str  # IDAP_EXPERIMENT (default "idap")
    image: str  # IDAP_IMAGE: the image every pipeline step runs in
    s3_endpoint: str | None  # AWS_ENDPOINT_URL / MLFLOW_S3_ENDPOINT_URL (MinIO, moto); None = AWS
    http_timeout: int  # MLFLOW_HTTP_REQUEST_TIMEOUT seconds, for a fast clear failure
    http_retries: int  # MLFLOW_HTTP_REQUEST_MAX_RETRIES

    @property
    def embedded(self) -> bool:
        return self.tracking_uri.startswith("sqlite:")


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None


def load_settings() -> Settings:
    """Read the environment (telemetry is switched off as a side effect)."""
    telemetry_off()
    workdir = Path(os.environ.get("IDAP_WORKDIR") or ".idap").absolute()
    tracking = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workdir / 'mlflow.db'}"
    if "://" not in tracking and not tracking.startswith("sqlite:"):
        raise SettingsError(f"MLFLOW_TRACKING_URI must be a URI (sqlite:///..., http://..., postgresql+psycopg2://...), got {tracking!r}")
    artifact_root = os.environ.get("IDAP_ARTIFACT_ROOT") or (workdir / "mlartifacts").as_uri()
    return Settings(
        workdir=workdir,
        tracking_uri=tracking,
        artifact_root=artifact_root,
        experiment=os.environ.get("IDAP_EXPERIMENT") or "idap",
        image=os.environ.get("IDAP_IMAGE") or DEFAULT_IMAGE,
        s3_endpoint=os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None,
        http_timeout=_int("MLFLOW_HTTP_REQUEST_TIMEOUT", 30),
        http_retries=_int("MLFLOW_HTTP_REQUEST_MAX_RETRIES", 3),
    )
