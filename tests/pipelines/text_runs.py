"""The compress pipeline run on a tiny text model, as the text and language-model pipeline tests run it: one
subprocess (`idap pipeline run compress`, kfp.local) with its own work dir and sqlite MLflow."""

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.idap.text_fixtures import tiny_recipe


def run_compress(root: Path, *, dataset: Path, base_model: Path, name: str, experiment: str) -> dict:
    """Run the pipeline on ``dataset`` from ``base_model``, registering ``name``; what it printed, parsed: the
    env it ran with, its stdout, the compressed bundle, the report and the data step's output."""
    tiny_recipe(root / "recipe.yaml")
    env = {**os.environ, "IDAP_WORKDIR": str(root / "work"), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'work/mlflow.db'}",
           "IDAP_EXPERIMENT": experiment, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "true"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "pipeline", "run", "compress", "--recipe", str(root / "recipe.yaml"),
         "--param", f"dataset={dataset}", "--param", f"base_model_uri={base_model}", "--param", "measure_latency=false",
         "--param", f"registered_name={name}", "--param", f"run_name={experiment}"],
        env=env, capture_output=True, text=True, timeout=1800)  # 2-8 min on the shared 2 cores, 16+ under load
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    printed = dict(re.findall(r"^([a-z][A-Za-z ()]+): (.+)$", proc.stdout, flags=re.M))
    pipeline_root = Path(printed["all step outputs"])
    return {"root": root, "env": env, "stdout": proc.stdout, "model": Path(printed["compressed model (bundle)"]),
            "report": Path(printed["report"]), "data": next(pipeline_root.glob("*/prepare-data/data"))}
