"""Tracking, registry and S3 against real services: PostgreSQL + MLflow server + moto S3 (see conftest.py)."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from components.services import registry, tracking
from components.services.mlflow_backend import TrackingError
from components.services.storage import StorageError, download
from idap.bundle import load_bundle, save_bundle
from idap.models import create_model
from idap.prune.state import StepRecord
from tests.components.test_tracking import (  # noqa: F401
    RECIPE,
    make_report,
    one_thread,
    race_two_registrations,
    subprocess_env,
)
from tests.integration.services import closed_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
FAST = 20  # seconds within which a dead service must be reported


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for seed, name in enumerate(("dense", "good", "worse")):
        torch.manual_seed(100 + seed)
        out[name] = save_bundle(create_model("cnn_small", 10, 1, 8), root / name, input_shape=(1, 8, 8))
    return out


def register(bundles, digits, model, name, parent=None, **report):
    return registry.register_and_promote(
        parent_run_id=parent, model_dir=bundles[model], dense_dir=bundles["dense"], report=make_report(**report),
        recipe=RECIPE, dataset=digits.describe(), registered_name=name, base_model=str(bundles["dense"]))


def alias(client, name, alias_name):
    try:
        return str(client.get_model_version_by_alias(name, alias_name).version)
    except Exception:
        return None


def load_in_fresh_process(uri: str, x: np.ndarray, tmp_path: Path) -> np.ndarray:
    np.save(tmp_path / "x.npy", x)
    code = """
        import json, sys, mlflow, numpy as np
        model = mlflow.pyfunc.load_model(sys.argv[1])
        print(json.dumps(model.predict(np.load(sys.argv[2])).tolist()))
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), uri, str(tmp_path / "x.npy")], cwd=REPO,
                          capture_output=True, text=True, timeout=180, env=subprocess_env())
    assert done.returncode == 0, done.stderr[-4000:]
    return np.array(json.loads(done.stdout.strip().splitlines()[-1]), dtype=np.float32)


def bundle_output(bundle, x):
    with torch.no_grad():
        return load_bundle(bundle)(torch.from_numpy(x)).numpy()


def test_register_and_promote_through_server(service_env, moto_s3, bundles, digits, tmp_path):
    name = "it-cnn"
    parent = tracking.start_pipeline_run("integration")
    with tracking.step_run(parent, "compress") as t:
        t.log_recipe(RECIPE)
        t.on_step(StepRecord("filter", 1, "prune", 1000, 5000, 94.0))
    first = register(bundles, digits, "good", name, parent=parent, latency=0.5)
    second = register(bundles, digits, "worse", name, parent=parent, latency=0.9)
    tracking.finish_pipeline_run(parent)
    client = MlflowClient(tracking_uri=service_env["MLFLOW_TRACKING_URI"])
    assert first["decision"] == "champion" and second["decision"] == "challenger"
    assert alias(client, name, "champion") == first["version"] and alias(client, name, "challenger") == second["version"]
    assert client.get_run(parent).info.status == "FINISHED"

    # Artifacts went through the server into the S3 bucket; this client holds no S3 credentials at all.
    assert "AWS_ACCESS_KEY_ID" not in os.environ
    s3 = boto3.client("s3", endpoint_url=moto_s3.endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                      region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=moto_s3.bucket, Prefix="mlflow/").get("Contents", [])]
    assert any(k.endswith("artifacts/good/weights.safetensors") for k in keys)

    x = np.random.default_rng(1).standard_normal((3, 1, 8, 8)).astype(np.float32)
    got = load_in_fresh_process(f"models:/{name}@champion", x, tmp_path)
    assert np.abs(got - bundle_output(bundles["good"], x)).max() <= 1e-5


def test_concurrent_promotions_through_server(service_env, bundles, digits, tmp_path):
    """No lock on a server: the compare-and-set loop must still leave the faster model as champion."""
    name = "it-race"
    results = race_two_registrations(tmp_path, bundles, digits, name)
    client = MlflowClient(tracking_uri=service_env["MLFLOW_TRACKING_URI"])
    assert len(client.search_model_versions(f"name = '{name}'")) == 2
    assert alias(client, name, "champion") == results["good"]["version"], results


def test_server_stopped_mid_run_fails_fast_and_moves_no_alias(mlflow_server_factory, mlflow_server, service_env,
                                                              monkeypatch, bundles, digits):
    name = "it-outage"
    doomed = mlflow_server_factory()  # a second server on the same PostgreSQL, stopped mid-run below
    monkeypatch.setenv("MLFLOW_TRACKING_URI", doomed.url)
    first = register(bundles, digits, "worse", name, latency=0.9)
    assert first["decision"] == "champion"
    parent = tracking.start_pipeline_run("outage")
    record = StepRecord("filter", 1, "prune", 1000, 5000, 94.0)
    with pytest.raises(TrackingError) as info, tracking.step_run(parent, "compress") as t:
        t.on_step(record)
        doomed.stop()
        started = time.monotonic()
        t.on_step(record)
    assert time.monotonic() - started < FAST
    assert f"the MLflow tracking server {doomed.url} is unreachable" in str(info.value)
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES=1" in str(info.value)

    started = time.monotonic()
    with pytest.raises(TrackingError, match="is unreachable"):
        register(bundles, digits, "good", name, parent=parent, latency=0.1)  # better, but the server is gone
    assert time.monotonic() - started < FAST
    # Seen through the surviving server on the same database: nothing was registered, no alias moved.
    survivor = MlflowClient(mlflow_server.url)
    assert [str(v.version) for v in survivor.search_model_versions(f"name = '{name}'")] == [first["version"]]
    assert alias(survivor, name, "champion") == first["version"]


def test_artifact_store_on_s3_and_an_unreachable_endpoint(moto_s3, monkeypatch, tmp_path, bundles, digits):
    """sqlite tracking with the artifact store directly on S3 (MLFLOW_S3_ENDPOINT_URL), then the endpoint dies."""
    for key in ("MLFLOW_TRACKING_URI", "IDAP_EXPERIMENT", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {**moto_s3.env, "IDAP_WORKDIR": str(tmp_path / "work"),
                       "IDAP_ARTIFACT_ROOT": f"s3://{moto_s3.bucket}/direct"}.items():
        monkeypatch.setenv(key, value)
    name = "it-direct"
    first = register(bundles, digits, "worse", name, latency=0.9)
    client = MlflowClient()
    assert client.get_model_version(name, first["version"]).source.startswith("models:/")
    x = np.random.default_rng(2).standard_normal((2, 1, 8, 8)).astype(np.float32)
    import mlflow

    got = mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(x)
    assert np.abs(got - bundle_output(bundles["worse"], x)).max() <= 1e-5

    dead = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", dead)
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    started = time.monotonic()
    with pytest.raises(TrackingError, match=r"artifact store on S3 \(http://127\.0\.0\.1:\d+\) failed after 3 attempt"):
        register(bundles, digits, "good", name, latency=0.1)
    assert time.monotonic() - started < FAST
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'")] == [first["version"]]
    assert alias(client, name, "champion") == first["version"]

    started = time.monotonic()
    with pytest.raises(StorageError, match=rf"cannot reach the S3 endpoint {dead} after 3 attempt"):
        download(f"s3://{moto_s3.bucket}/direct/anything", tmp_path / "x")
    assert time.monotonic() - started < FAST
