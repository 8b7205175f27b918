"""Real services for integration tests, started once per session and stopped at the end.

* ``postgres_uri``: a private PostgreSQL cluster on 127.0.0.1 (skipped only when the server binaries are
  absent: ``apt-get install postgresql``), as ``postgresql+psycopg2://postgres@127.0.0.1:PORT/mlflow``.
* ``moto_s3``: an S3 endpoint (moto server) with a bucket; ``.env`` holds endpoint + dummy credentials.
* ``mlflow_server``: ``mlflow server`` on that PostgreSQL, artifacts proxied to the S3 bucket (as
  infra/base/mlflow.yaml runs it); ``.url`` is the tracking URI.
* ``mlflow_server_factory``: start an extra server on the same backend (e.g. one a test may kill).
* ``service_env``: a function-scoped env for a client of ``mlflow_server`` (own IDAP_WORKDIR, a fast
  failure when the server goes away, no S3 credentials: artifacts go through the server).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from tests.integration.services import (
    TELEMETRY_OFF,
    Service,
    create_bucket,
    postgres_bin,
    start_mlflow_server,
    start_postgres,
)

BUCKET = "idap-integration"


@dataclass
class S3:
    endpoint: str
    bucket: str
    env: dict
    service: Service


@pytest.fixture(scope="session")
def service_logs(tmp_path_factory):
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="session")
def postgres_uri(service_logs):
    if postgres_bin() is None:
        pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql): "
                    "no /usr/lib/postgresql/*/bin/initdb")
    service = start_postgres(service_logs)
    yield service.url
    service.stop()


@pytest.fixture(scope="session")
def moto_s3(moto_server):
    create_bucket(moto_server.url, BUCKET)
    return S3(moto_server.url, BUCKET, dict(moto_server.env), moto_server)


@pytest.fixture(scope="session")
def mlflow_server_factory(postgres_uri, moto_s3, service_logs):
    started: list[Service] = []

    def start() -> Service:
        service = start_mlflow_server(postgres_uri, f"s3://{moto_s3.bucket}/mlflow", moto_s3.env, service_logs)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture(scope="session")
def mlflow_server(mlflow_server_factory) -> Service:
    return mlflow_server_factory()


@pytest.fixture
def service_env(mlflow_server, tmp_path, monkeypatch):
    """This process as a client of ``mlflow_server``; returns the env for subprocesses too."""
    for key in ("IDAP_ARTIFACT_ROOT", "IDAP_EXPERIMENT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    env = {**TELEMETRY_OFF, "MLFLOW_TRACKING_URI": mlflow_server.url, "IDAP_WORKDIR": str(tmp_path / "work"),
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return dict(os.environ)


@pytest.fixture(scope="package")
def cluster(moto_s3, tmp_path_factory):
    """The RayCluster-shaped local cluster (head + worker node on 127.0.0.1, tests/integration/test_ray_cluster.py),
    started once for every test that needs it: a start and a stop cost about a minute each on the 2-core VM."""
    from tests.integration.test_ray_cluster import running_cluster

    with running_cluster(moto_s3, tmp_path_factory) as started:
        yield started
