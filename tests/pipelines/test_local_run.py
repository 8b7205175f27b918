"""End to end: `idap pipeline run compress` on this machine (kfp.local, one subprocess per step), then the
"same answer either way" check against `idap compress` in one process on the pipeline's dense bundle."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from components.services.artifacts import read_json
from idap.bundle import load_bundle
from idap.cli import CompressOptions, build_parser, run_compress
from idap.data import load_splits
from idap.dense.baseline import train_dense

pytestmark = pytest.mark.slow

RECIPE = {
    "calibration_size": 128, "validation_size": 256, "eval_batch_size": 256, "device": "cpu", "max_accuracy_drop": 5.0,
    "filter": {"steps": 2, "p0": 0.2},
    "recovery": {"step_budget": 10, "final_budget": 10, "batch_size": 64},
}
TRAIN_EPOCHS = 10
CANARY = "canary-7f3c9a-do-not-log"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One local pipeline run on digits + cnn_small with a tiny recipe (about 1.5 min on 2 shared cores)."""
    root = tmp_path_factory.mktemp("local-run")
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    env = {**os.environ, "IDAP_WORKDIR": str(root / "work"), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'work/mlflow.db'}",
           "IDAP_EXPERIMENT": "local-run-test",
           # planted credentials: none may reach any output, log, database or artifact (test_planted_secrets...)
           "AWS_SECRET_ACCESS_KEY": CANARY, "MLFLOW_TRACKING_PASSWORD": CANARY, "KFP_TOKEN": CANARY,
           # one thread per step: two OpenMP threads per process spin against each other on 2 shared cores
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "pipeline", "run", "compress", "--recipe", str(root / "recipe.yaml"),
         "--param", "dataset=digits", "--param", f"train_epochs={TRAIN_EPOCHS}", "--param", "measure_latency=false",
         "--param", "run_name=e2e"],
        env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    printed = dict(re.findall(r"^([a-z][A-Za-z ()]+): (.+)$", proc.stdout, flags=re.M))
    pipeline_root = Path(printed["all step outputs"])
    return {"root": root, "env": env, "stdout": proc.stdout, "stderr": proc.stderr, "printed": printed,
            "model": Path(printed["compressed model (bundle)"]), "report_md": Path(printed["report"]),
            "dense": next(pipeline_root.glob("*/train-baseline/dense")),
            "data": next(pipeline_root.glob("*/prepare-data/data")),
            "report": read_json(next(pipeline_root.glob("*/evaluate/report_json")))}


def test_outputs_and_progress(run):
    splits = load_splits(run["data"])
    model = load_bundle(run["model"])  # parity-checked on load
    assert model(splits.test_x[:4]).shape == (4, 10)
    text = run["report_md"].read_text()
    assert text.startswith("# IDAP++ compression report") and "](data:image/png;base64," in text
    tasks = ("prepare-data", "train-baseline", "score-divergence", "prune-filters", "prune-layers", "finetune",
             "evaluate", "register-model")
    console = run["stdout"] + run["stderr"]
    for i, task in enumerate(tasks, 1):  # one line per step, in order, instead of kfp's executor dumps
        assert re.search(rf"^\[{i}/8\] {task} +ok ", console, flags=re.M), console
    assert "executor_input" not in console and len(console.splitlines()) < 60
    assert "  MACs " in run["stdout"] and "stage 2 removed nothing" in run["stdout"]  # the summary table
    log = Path(run["printed"]["full log"]).read_text()  # everything else is in the log file
    assert "Got executor_input" in log and "[finetune 0] finetune" in log
    assert run["printed"]["tracking UI"] == f"mlflow ui --backend-store-uri {run['env']['MLFLOW_TRACKING_URI']}"


def test_a_registered_version_exists(run):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=run["env"]["MLFLOW_TRACKING_URI"])
    [found] = client.search_model_versions("name = 'idap-cnn_small-digits'")
    version = client.get_model_version(found.name, found.version)  # search results carry no aliases
    assert "champion" in version.aliases and version.tags["idap.dataset"] == "digits"
    parent = client.get_run(version.tags["idap.pipeline_run_id"])
    assert parent.info.status == "FINISHED" and parent.info.run_name == "e2e"


def test_same_answer_as_idap_compress_in_one_process(run, tmp_path):
    """The stages as separate processes give the model and figures `idap compress` gives in one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the pipeline's steps ran (OMP_NUM_THREADS=1)
    try:
        args = build_parser().parse_args([
            "compress", "--model-dir", str(run["dense"]), "--dataset", "digits", "--recipe",
            str(run["root"] / "recipe.yaml"), "--out", str(tmp_path / "direct"), "--no-latency", "--no-onnx", "--quiet"])
        _, direct, _ = run_compress(CompressOptions.from_args(args))
        splits = load_splits(run["data"])
        a, b = load_bundle(run["model"]), load_bundle(tmp_path / "direct" / "model")
        with torch.no_grad():
            assert torch.allclose(a(splits.test_x), b(splits.test_x), atol=1e-5, rtol=0)
        # and the pipeline's dense baseline is what `idap compress --model cnn_small` trains in-process
        dense, _ = train_dense("cnn_small", splits, epochs=TRAIN_EPOCHS, seed=0, device="cpu", progress=False)
        with torch.no_grad():
            assert torch.allclose(load_bundle(run["dense"])(splits.test_x), dense(splits.test_x), atol=1e-5, rtol=0)
    finally:
        torch.set_num_threads(threads)
    piped = run["report"]
    for side in ("dense", "compressed"):
        for key in ("params", "macs", "val_acc", "test_acc"):
            assert piped[side][key] == direct[side][key], (side, key)
    for key in ("params_reduction", "macs_reduction", "val_acc_drop_pp", "test_acc_drop_pp"):
        assert piped["ratios"][key] == direct["ratios"][key], key

    def untimed(steps):
        return [{k: v for k, v in s.items() if k != "seconds"} for s in steps]

    assert untimed(piped["trajectory"]) == untimed(direct["trajectory"])
    assert piped["divergence_profile"] == direct["divergence_profile"]
    assert piped["widths"] == direct["widths"] and piped["removed_blocks"] == direct["removed_blocks"]
    assert piped["recipe"] == direct["recipe"] and piped["dataset"] == direct["dataset"]
    assert json.loads(json.dumps(piped["warnings"])) == direct["warnings"]


def test_planted_secrets_appear_in_no_output_log_database_or_artifact(run):
    assert CANARY not in run["stdout"] and CANARY not in run["stderr"]
    scanned = 0
    for path in run["root"].rglob("*"):
        if path.is_file() and not path.is_symlink():
            scanned += 1
            assert CANARY.encode() not in path.read_bytes(), f"secret found in {path}"
    assert scanned > 20  # the sqlite database, MLflow artifacts, step logs, bundles and reports were all read
