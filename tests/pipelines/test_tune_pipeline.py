"""The tune pipeline: it compiles with the search between the baseline and the compress tail, and
`idap pipeline run tune` runs it on this machine (kfp.local, one subprocess per step, local Ray in the search
step) on digits: the winner's recipe is what the tail compressed, registered and promoted, and the search
run (the pipeline's MLflow run) holds the trials and is the registered version's lineage parent."""

import os
import re
import subprocess
import sys

import pytest
import yaml

from components.services.artifacts import read_json
from components.services.search_space import DEFAULT_SPACE, SearchSpace
from pipelines.cli import PIPELINES, main

pytestmark = pytest.mark.slow

RECIPE = {
    "calibration_size": 128, "validation_size": 256, "eval_batch_size": 256, "device": "cpu", "max_accuracy_drop": 30.0,
    "filter": {"steps": 2, "p0": 0.05},
    "recovery": {"step_budget": 5, "final_budget": 5, "batch_size": 64},
}
SPACE = "objective: constrained\nspace:\n  filter.p0: {loguniform: [0.02, 0.3]}\n"
TAIL = ["score-divergence", "prune-filters", "prune-layers", "finetune", "evaluate", "register-model"]


def test_tune_pipeline_compiles_with_the_search_feeding_the_compress_tail(tmp_path):
    assert "tune" in PIPELINES
    assert main(["pipeline", "compile", "--out", str(tmp_path)]) == 0
    spec, *platform = [d for d in yaml.safe_load_all((tmp_path / "tune.yaml").read_text()) if d]
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(tasks) == sorted(["prepare-data", "train-baseline", "search-compression", *TAIL])
    search = tasks["search-compression"]
    assert search["inputs"]["artifacts"]["dense"]["taskOutputArtifact"]["producerTask"] == "train-baseline"
    assert search["inputs"]["artifacts"]["data"]["taskOutputArtifact"]["producerTask"] == "prepare-data"
    for name in TAIL:  # the winner's recipe, and the pipeline's run (the search run) as parent
        params = tasks[name]["inputs"]["parameters"]
        assert params["recipe_json"]["taskOutputParameter"] == {"outputParameterKey": "recipe_json",
                                                                "producerTask": "search-compression"}
        assert params["parent_run_id"]["taskOutputParameter"]["producerTask"] == "prepare-data"
    default = spec["root"]["inputDefinitions"]["parameters"]["search_space"]["defaultValue"]
    # the shipped default space, baked in at compile time: the image holds no recipes/
    assert SearchSpace.from_text(default) == SearchSpace.from_text(DEFAULT_SPACE.read_text())
    component = spec["components"][search["componentRef"]["name"]]
    assert component["outputDefinitions"]["artifacts"]["report"]["artifactType"]["schemaTitle"] == "system.Markdown"
    # the cluster's MLflow / object-store environment, as every compress step gets it (pipelines/_platform.py)
    executors = platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert "exec-search-compression" in executors and "exec-prepare-data" in executors
    resources = spec["deploymentSpec"]["executors"]["exec-search-compression"]["container"]["resources"]
    assert resources["cpuLimit"] == 4.0


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One local run: digits + cnn_small, 3 trials, the tiny recipe (about 2 minutes on 2 shared cores)."""
    root = tmp_path_factory.mktemp("tune-run")
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    env = {**os.environ, "IDAP_WORKDIR": str(root / "work"), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'work/mlflow.db'}",
           "IDAP_EXPERIMENT": "tune-run-test", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "pipeline", "run", "tune", "--recipe", str(root / "recipe.yaml"),
         "--param", "dataset=digits", "--param", "train_epochs=10", "--param", "measure_latency=false",
         "--param", "num_samples=3", "--param", f"search_space={SPACE}", "--param", "run_name=tune-e2e"],
        env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    [pipeline_root] = (root / "work" / "kfp").glob("idap-tune-*")
    return {"env": env, "stdout": proc.stdout + proc.stderr, "root": pipeline_root}


def _client(run):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=run["env"]["MLFLOW_TRACKING_URI"])


def test_the_winner_is_compressed_registered_and_the_search_is_its_lineage_parent(run):
    client = _client(run)
    [found] = client.search_model_versions("name = 'idap-cnn_small-digits'")
    version = client.get_model_version(found.name, found.version)
    assert "champion" in version.aliases  # the first version, within budget: promoted by the existing rule
    parent = client.get_run(version.tags["idap.pipeline_run_id"])
    assert parent.info.status == "FINISHED" and parent.info.run_name == "tune-e2e"
    assert parent.data.tags["idap.search"] == "true" and parent.data.params["search.num_samples"] == "3"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    trials = [r for r in children if r.data.tags.get("idap.kind") == "trial"]
    steps = {r.data.tags.get("idap.step") for r in children}
    assert len(trials) == 3 and {"prepare_data", "train_baseline", "evaluate", "register"} <= steps
    assert sum(r.data.tags["idap.default_recipe"] == "true" for r in trials) == 1

    pareto = read_json(next(run["root"].glob("search-compression/pareto")))
    winner = next(t for t in pareto["trials"] if t["trial_id"] == pareto["winner"])
    report = read_json(next(run["root"].glob("evaluate/report_json")))
    assert report["recipe"]["filter"]["p0"] == pytest.approx(winner["config"]["filter.p0"])
    assert parent.data.tags["idap.search_winner"] == winner["trial_id"]
    # the tail recompressed the winner's recipe from the same dense model and data: the same model the trial made
    assert report["compressed"]["macs"] == winner["macs"] and report["compressed"]["val_acc"] == pytest.approx(winner["val_acc"])


def test_the_search_report_is_a_markdown_artifact_with_the_pareto_plot(run):
    text = next(run["root"].glob("search-compression/report")).read_text()
    assert text.startswith("# Compression search (constrained, macs)")
    assert "(default)" in text and re.search(r"!\[Pareto front\]\(data:image/png;base64,", text)
    best = yaml.safe_load(next(run["root"].glob("search-compression/best_recipe")).read_text())
    assert best["filter"]["steps"] == RECIPE["filter"]["steps"]
    assert "search-compression" in run["stdout"]  # the step reached the console
