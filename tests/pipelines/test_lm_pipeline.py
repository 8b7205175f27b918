"""The compress pipeline on a decoder language model, end to end on this machine (kfp.local): a tiny random
Llama imported from a Hugging Face directory, a plain text file as a `kind: lm` spec (the pipeline's data step
runs before the model is read, so the spec names the tokenizer); the compressed LM is registered in MLflow
(sqlite) with its perplexity on the pipeline's parent run."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from idap.bundle import load_bundle
from idap.data import load_splits
from idap.lm_task import mean_token_ce
from idap.text_models import import_hf_model
from tests.idap.test_lm_task import write_book
from tests.idap.text_fixtures import hf_llama_dir

pytestmark = pytest.mark.slow
pytest.importorskip("transformers")

T = 16
RECIPE = {
    "calibration_size": 16, "validation_size": 16, "eval_batch_size": 64, "device": "cpu", "max_accuracy_drop": 50.0,
    "target_macs_reduction": 1.3, "filter": {"steps": 2, "p0": 0.2},
    "recovery": {"step_budget": 5, "final_budget": 5, "batch_size": 16, "augment": False},
}
NAME = "idap-tiny-llama-lm"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm-run")
    import_hf_model(hf_llama_dir(root / "hf"), root / "dense", max_length=T)
    write_book(root / "book.txt")
    (root / "book.yaml").write_text(f"kind: lm\npath: book.txt\ntokenizer: dense\nblock_size: {T}\n")
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    env = {**os.environ, "IDAP_WORKDIR": str(root / "work"), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'work/mlflow.db'}",
           "IDAP_EXPERIMENT": "lm-run-test", "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "DO_NOT_TRACK": "true"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "pipeline", "run", "compress", "--recipe", str(root / "recipe.yaml"),
         "--param", f"dataset={root / 'book.yaml'}", "--param", f"base_model_uri={root / 'dense'}",
         "--param", "measure_latency=false", "--param", f"registered_name={NAME}", "--param", "run_name=lm-e2e"],
        env=env, capture_output=True, text=True, timeout=1800)  # ~2 min idle on 2 cores
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    printed = dict(re.findall(r"^([a-z][A-Za-z ()]+): (.+)$", proc.stdout, flags=re.M))
    pipeline_root = Path(printed["all step outputs"])
    return {"root": root, "env": env, "stdout": proc.stdout, "model": Path(printed["compressed model (bundle)"]),
            "report": Path(printed["report"]), "data": next(pipeline_root.glob("*/prepare-data/data"))}


def test_the_compressed_lm_is_smaller_and_its_report_has_perplexity(run):
    splits = load_splits(run["data"])
    assert type(splits).__name__ == "LMSplits" and splits.input_shape == (T,)
    dense, model = load_bundle(run["root"] / "dense"), load_bundle(run["model"])  # both parity-checked on load
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in dense.parameters())
    report = json.loads((run["report"].parent / "report_json").read_text())  # the evaluate step's outputs
    assert report["dataset"]["kind"] == "lm" and report["ratios"]["macs_reduction"] >= 1.3
    measured = torch.exp(torch.tensor(mean_token_ce(model, splits.test_x, splits.test_y))).item()
    assert report["compressed"]["test_ppl"] == pytest.approx(measured, rel=1e-4)
    assert re.search(r"^\s+test perplexity\s+[\d.]+\s+[\d.]+", run["stdout"], flags=re.M)  # the console summary
    assert "test next-token accuracy (%)" in run["stdout"]


def test_the_registered_lm_version_and_the_parent_run_carry_perplexity(run):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=run["env"]["MLFLOW_TRACKING_URI"])
    [version] = client.search_model_versions(f"name = '{NAME}'")
    assert "token ids" in client.get_model_version(NAME, version.version).tags["idap.input"]
    [parent] = client.search_runs([client.get_experiment_by_name("lm-run-test").experiment_id],
                                  filter_string="tags.`idap.kind` = 'pipeline'")
    metrics = parent.data.metrics
    assert {"dense_test_ppl", "compressed_test_ppl"} <= set(metrics), sorted(metrics)
    assert metrics["compressed_test_ppl"] > 1.0
