"""The compress pipeline run on a tiny text model, as the text and language-model pipeline tests run it: one
subprocess (`idap pipeline run compress`, kfp.local) with its own work dir and sqlite MLflow."""

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

# seconds-long stages for tiny random models: 1.3x fewer MACs in 2 filter steps, short recoveries
RECIPE = {
    "calibration_size": 16, "validation_size": 16, "eval_batch_size": 64, "device": "cpu", "max_accuracy_drop": 50.0,
    "target_macs_reduction": 1.3, "filter": {"steps": 2, "p0": 0.2},
    "recovery": {"step_budget": 5, "final_budget": 5, "batch_size": 16, "augment": False},
}


def run_compress(root: Path, *, dataset: Path, base_model: Path, name: str, experiment: str) -> dict:
    """Run the pipeline on ``dataset`` from ``base_model``, registering ``name``; what it printed, parsed: the
    env it ran with, its stdout, the compressed bundle, the report and the data step's output."""
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
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
