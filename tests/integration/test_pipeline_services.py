"""The compress pipeline, run locally (kfp.local), against real services: an MLflow server backed by a private
PostgreSQL with artifacts on a moto S3 server, the dataset read from S3. Then a fresh process loads
``models:/NAME@champion`` and must reproduce the bundle's outputs."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from idap.bundle import load_bundle
from idap.bundle.format import read_input_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECIPE = {
    "calibration_size": 128, "validation_size": 256, "eval_batch_size": 256, "device": "cpu", "max_accuracy_drop": 5.0,
    "filter": {"steps": 2, "p0": 0.2},
    "recovery": {"step_budget": 5, "final_budget": 10, "batch_size": 64},
}
NAME = "idap-integration-pipeline"

LOAD = """
import json, sys
import mlflow, numpy as np
x = np.load(sys.argv[1])
model = mlflow.pyfunc.load_model("models:/{name}@champion")
print(json.dumps(np.asarray(model.predict(x)).tolist()))
"""


def test_compress_pipeline_against_postgres_mlflow_and_s3(service_env, moto_s3, tmp_path):
    from sklearn.datasets import load_digits

    from components.services import storage

    # the dataset lives on S3: the pipeline's first step downloads (and integrity-checks) it
    digits = load_digits()
    local = tmp_path / "digits.npz"
    np.savez(local, x=digits.images.astype(np.float32), y=digits.target)
    env = {**service_env, **moto_s3.env, "OMP_NUM_THREADS": "1"}
    os.environ.update(moto_s3.env)
    uri = storage.upload(local, f"s3://{moto_s3.bucket}/datasets/digits.npz")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))

    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "pipeline", "run", "compress", "--recipe", str(tmp_path / "recipe.yaml"),
         "--param", f"dataset={uri}", "--param", "train_epochs=8", "--param", "measure_latency=false",
         "--param", f"registered_name={NAME}", "--param", "run_name=integration"],
        env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    printed = dict(re.findall(r"^([a-z][A-Za-z ()]+): (.+)$", proc.stdout, flags=re.M))
    bundle = load_bundle(Path(printed["compressed model (bundle)"]))

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=service_env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert champion.tags["idap.pipeline_run_id"]
    assert client.get_run(champion.tags["idap.pipeline_run_id"]).info.status == "FINISHED"
    # the artifacts went to S3 through the server
    keys = [o["Key"] for o in storage._client().list_objects_v2(Bucket=moto_s3.bucket).get("Contents", [])]
    assert any(k.startswith("mlflow/") and k.endswith("weights.safetensors") for k in keys)

    # the served model takes raw pixels and normalises inside with the statistics its bundle records
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    spec = read_input_spec(Path(printed["compressed model (bundle)"]))
    assert spec["mean"] is not None and spec["std"] is not None
    raw = x * torch.tensor(spec["std"]).view(1, -1, 1, 1) + torch.tensor(spec["mean"]).view(1, -1, 1, 1)
    np.save(tmp_path / "x.npy", raw.numpy())
    fresh = subprocess.run([sys.executable, "-c", LOAD.format(name=NAME), str(tmp_path / "x.npy")],
                           env=service_env, capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    served = torch.tensor(json.loads(fresh.stdout.strip().splitlines()[-1]))
    mean, std = torch.tensor(spec["mean"]).view(1, -1, 1, 1), torch.tensor(spec["std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        assert (served - bundle((raw * float(spec["scale"] or 1.0) - mean) / std)).abs().max().item() <= 1e-5
