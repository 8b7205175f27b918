"""The `idap` console script: parameters, user errors, tracked `idap compress`, `idap promote`, dispatch."""

import json
import os
import subprocess
import sys

import pytest
import torch

import pipelines.cli as cli
from components.services import mlflow_backend, registry
from pipelines.cli import load_pipeline, main, pipeline_arguments

TINY = """calibration_size: 128
validation_size: 256
eval_batch_size: 256
device: cpu
max_accuracy_drop: 5.0
filter: {steps: 1, p0: 0.2}
recovery: {step_budget: 5, final_budget: 5, batch_size: 64}
"""


@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.setenv("IDAP_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    monkeypatch.setenv("IDAP_EXPERIMENT", "cli-tests")
    (tmp_path / "tiny.yaml").write_text(TINY)
    threads = torch.get_num_threads()
    yield tmp_path
    torch.set_num_threads(threads)  # --threads of a command under test sets it for the whole process


def one_error_line(capsys) -> str:
    """The command's own error: one line, the last one (MLflow may log its database setup before it)."""
    err = [line for line in capsys.readouterr().err.strip().splitlines() if " INFO mlflow." not in line]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ---- parameters ----------------------------------------------------------------------------------
def test_parameters_are_typed_by_the_pipeline_signature(work):
    args = pipeline_arguments(load_pipeline("compress"), ["seed=3", "train_epochs=1.5", "measure_latency=false",
                                                          "dataset=digits", "run_name=a=b"], str(work / "tiny.yaml"))
    assert args["seed"] == 3 and args["train_epochs"] == 1.5 and args["measure_latency"] is False
    assert args["dataset"] == "digits" and args["run_name"] == "a=b"
    assert json.loads(args["recipe_json"])["filter"]["steps"] == 1


@pytest.mark.parametrize("argv, message", [
    (["--param", "epochs=3"], "unknown parameter 'epochs' for pipeline idap-compress; valid: ['base_model_uri',"),
    (["--param", "seed=three"], "parameter seed must be integer, got 'three'"),
    (["--param", "measure_latency=maybe"], "parameter measure_latency must be boolean"),
    (["--param", "seed"], "--param 'seed' must look like name=value"),
    (["--param", "max_accuracy_drop=500"], "max_accuracy_drop must be in [0, 100]"),
    (["--param", "target_macs_reduction=0.5"], "target_macs_reduction must be empty or a factor"),
    (["--recipe", "missing.yaml"], "recipe file missing.yaml does not exist"),
    (["--param", "recipe_json={", ], "recipe_json is not valid JSON"),
    (["--param", "time_budget=soon"], "recovery.time_budget must be a duration such as 90s, 20m"),
])
def test_run_refuses_bad_parameters_before_running(work, capsys, argv, message):
    assert main(["pipeline", "run", "compress", *argv]) == 2
    assert message in one_error_line(capsys)
    assert not (work / "work" / "kfp").exists()


def test_recipe_given_twice_is_refused(work, capsys):
    assert main(["pipeline", "run", "compress", "--recipe", str(work / "tiny.yaml"), "--param", "recipe_json={}"]) == 2
    assert "either as --recipe FILE or as --param recipe_json" in one_error_line(capsys)


def test_unknown_pipeline_lists_the_valid_ones(capsys):
    assert main(["pipeline", "run", "search"]) == 2
    assert "unknown pipeline 'search'; valid: ['compress'" in one_error_line(capsys)


def test_run_prints_where_everything_is(work, capsys, monkeypatch):
    outputs = {"model": "/w/kfp/run/finetune/model", "report": "/w/kfp/run/evaluate/report",
               "registration": json.dumps({"name": "n", "version": "2", "decision": "challenger", "reason": "slower"})}
    seen = {}
    monkeypatch.setattr(cli, "run_local", lambda name, arguments, **kw: seen.update(kw) or {
        "outputs": outputs, "pipeline_root": "/w/kfp", "tracking_uri": "sqlite:////w/mlflow.db", "seconds": 12.0})
    assert main(["pipeline", "run", "compress", "--param", "dataset=digits", "--quiet"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "compressed model (bundle): /w/kfp/run/finetune/model" in out
    assert "report: /w/kfp/run/evaluate/report" in out
    assert "registered: n version 2 (challenger: slower)" in out
    assert "mlflow ui --backend-store-uri sqlite:////w/mlflow.db" in out
    log_path = seen["log_path"]
    assert f"full log: {log_path}" in out and f"full log: {log_path}" in captured.err
    assert log_path.parent == work / "work" / "logs" and seen["quiet"] and not seen["verbose"]


def test_run_ends_with_the_summary_table(work, capsys, monkeypatch):
    from idap.report import build_report

    run_dir = work / "kfp" / "run" / "evaluate"
    run_dir.mkdir(parents=True)
    figures = {"val_acc": 90.0, "test_acc": 89.0, "params": 2000, "macs": 10_000}
    report = build_report(dense=figures, compressed={**figures, "macs": 4000, "params": 1000}, steps=[],
                          recipe={"max_accuracy_drop": 1.0, "target_macs_reduction": 3.0}, dataset={"name": "digits"},
                          model_name="resnet_tiny", removed_blocks=["layer2.1"])
    (run_dir / "report_json").write_text(json.dumps(report))
    monkeypatch.setattr(cli, "run_local", lambda name, arguments, **kw: {
        "outputs": {"report": str(run_dir / "report")}, "pipeline_root": "r", "tracking_uri": "sqlite:///x",
        "seconds": 1.0})
    assert main(["pipeline", "run", "compress"]) == 0
    out = capsys.readouterr().out
    assert "  MACs " in out and "2.50x fewer" in out and "stage 2 removed 1 blocks: layer2.1" in out
    assert "TARGET NOT REACHED: asked for 3x fewer MACs (reached 2.50x) within 1.0 pp" in out


def test_quiet_and_verbose_exclude_each_other(work):
    with pytest.raises(SystemExit) as exc:
        main(["pipeline", "run", "compress", "--quiet", "--verbose"])
    assert exc.value.code == 2


# ---- the tune pipeline's search space, checked before anything runs -------------------------------
@pytest.mark.parametrize("params, message", [
    (['search_space={"space": {"filter.p00": {"uniform": [0.02, 0.2]}}}'], "search space: filter.p00: unknown recipe field"),
    (['search_space={"space": {"seed": {"randint": [0, 3]}}}'], "search space: seed cannot be searched"),
    (['search_space={"space": {"filter.p0": {"uniform": [0.1, 0.2]}}}'],
     "filter.p0: the base recipe's value 0.05 lies outside uniform [0.1, 0.2]"),
    (['search_space={"space": {"filter.steps": {"uniform": [5, 9]}}}'], "filter.steps: uniform draws real numbers"),
    (["objective=best"], "objective must be one of ['constrained', 'multi'], got 'best'"),
    (["search_space=missing.yaml"], "search space file missing.yaml does not exist"),
])
def test_run_tune_refuses_a_bad_search_space_before_anything_starts(work, capsys, params, message):
    argv = ["pipeline", "run", "tune", "--recipe", "recipes/demo.yaml"]
    assert main([*argv, *(a for p in params for a in ("--param", p))]) == 2
    assert message in one_error_line(capsys)
    assert not (work / "work").exists()  # no kfp run, no MLflow store (run_local creates the work dir first)
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()


def test_the_demo_recipe_fits_the_default_search_space():
    """README: ``idap pipeline run tune --recipe recipes/demo.yaml`` searches around the demo recipe."""
    arguments = pipeline_arguments(load_pipeline("tune"), [], "recipes/demo.yaml")
    assert json.loads(arguments["recipe_json"])["layer"]["enabled"] is True


# ---- idap compress with tracking ----------------------------------------------------------------
def test_compress_is_tracked_in_mlflow(work, capsys):
    out_dir = work / "out"
    assert main(["compress", "--model", "cnn_small", "--train-epochs", "2", "--dataset", "digits", "--recipe",
                 str(work / "tiny.yaml"), "--out", str(out_dir), "--no-latency", "--no-onnx", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    client = mlflow_backend.get_client(mlflow_backend.configure())
    run = client.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["idap.step"] == "compress"
    assert run.data.params["filter.steps"] == "1" and run.data.tags["idap.dataset"] == "digits"
    assert run.data.metrics["compressed_test_acc"] == pytest.approx(result["test_acc"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [0, 1, 2]  # dense, filter, finetune
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "compress")}
    assert {"compress/model", "compress/dense", "compress/recipe.yaml"} <= logged
    assert not any("report" in path for path in logged)  # the report files once, under report/
    assert "report/report.json" in {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert "**cnn_small** on **digits**" in run.data.tags["mlflow.note.content"]


def test_compress_register_promotes_like_the_pipeline(work, capsys):
    argv = ["compress", "--model", "cnn_small", "--train-epochs", "1", "--dataset", "digits", "--recipe",
            str(work / "tiny.yaml"), "--no-latency", "--no-onnx", "--quiet", "--register", "cli-digits",
            "--promote-objective", "accuracy"]
    assert main([*argv, "--out", str(work / "a")]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["registration"] == {"name": "cli-digits", "version": "1", "decision": "champion", "champion": True}
    client = mlflow_backend.get_client(mlflow_backend.configure())
    mv = client.get_model_version("cli-digits", "1")
    assert mv.tags["idap.objective"] == "accuracy" and mv.tags["idap.pipeline_run_id"] == first["mlflow_run_id"]
    assert "cnn_small trained by idap compress (1 epochs" in mv.tags["idap.base_model"]
    assert "Decision: **champion**" in mv.description
    run = client.get_run(first["mlflow_run_id"])
    assert run.data.tags["idap.registered_version"] == "1" and run.data.tags["idap.promotion"] == "champion"


def test_compress_options_are_the_command_line_s():
    from pathlib import Path

    from idap.cli import CompressOptions, build_parser

    args = build_parser().parse_args(["compress", "--model", "cnn_small", "--dataset", "digits", "--out", "o",
                                      "--no-onnx", "--quiet", "--set", "filter.steps=2", "--train-epochs", "1"])
    opts = CompressOptions.from_args(args)
    assert (opts.model, opts.model_dir, opts.dataset, opts.out, opts.train_epochs) == ("cnn_small", None, "digits",
                                                                                      Path("o"), 1)
    assert not opts.onnx and opts.latency and not opts.progress and not opts.resume
    assert opts.recipe.filter.steps == 2
    with pytest.raises(ValueError, match="needs a dense model"):
        CompressOptions(dataset="digits", out=Path("o"))


def test_compress_register_needs_tracking_and_a_valid_objective(work, capsys):
    base = ["compress", "--model", "cnn_small", "--dataset", "digits", "--out", str(work / "x")]
    assert main([*base, "--register", "n", "--no-track"]) == 2
    assert "--register needs tracking" in one_error_line(capsys)
    assert main([*base, "--register", "n", "--promote-tolerance-pp", "-1"]) == 2
    assert "tolerance_pp must be a number >= 0" in one_error_line(capsys)
    assert not (work / "x").exists()


def test_no_track_writes_no_tracking_store(work, capsys):
    assert main(["compress", "--model", "cnn_small", "--train-epochs", "1", "--dataset", "digits", "--recipe",
                 str(work / "tiny.yaml"), "--out", str(work / "out"), "--no-latency", "--no-onnx", "--quiet",
                 "--no-track"]) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(work / "out")
    assert (work / "out" / "model" / "weights.safetensors").is_file()
    assert not (work / "work" / "mlflow.db").exists()


# ---- promote and dispatch -----------------------------------------------------------------------
def test_promote_prints_the_decision_as_json(work, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(registry, "promote", lambda name, version, force, reason: calls.append(
        (name, version, force, reason)) or {"name": name, "version": version, "decision": "manual"})
    assert main(["promote", "--name", "idap-cnn", "--version", "3", "--force"]) == 0
    assert json.loads(capsys.readouterr().out) == {"name": "idap-cnn", "version": "3", "decision": "manual"}
    assert calls == [("idap-cnn", "3", True, "manual")]


def test_promote_of_a_missing_version_is_one_clear_line(work, capsys):
    assert main(["promote", "--name", "no-such-model", "--version", "1"]) == 2
    assert "no-such-model" in one_error_line(capsys)


def test_library_commands_dispatch_to_idap_cli(work, capsys):
    assert main(["evaluate", "--model-dir", str(work / "missing"), "--dataset", "digits"]) == 2
    assert "missing" in one_error_line(capsys)


def test_console_script_is_the_edge_cli():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["idap"] == "pipelines.cli:main"


def test_idap_stays_a_plain_library():
    """idap never imports orchestration, not even through its CLI."""
    code = ("import idap, idap.cli.commands, sys; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'kfp', 'mlflow', 'ray', 'boto3', 'components', "
            "'pipelines'}); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_compress_reads_an_s3_model_dir_through_storage(work, capsys, monkeypatch):
    from components.services import storage
    from idap.bundle import save_bundle
    from idap.models import create_model

    torch.manual_seed(0)
    local = save_bundle(create_model("cnn_small", 10, 1, 8), work / "cache" / "dense", input_shape=(1, 8, 8))
    asked = []
    monkeypatch.setattr(storage, "resolve_input", lambda uri, workdir: asked.append(uri) or local)
    assert main(["compress", "--model-dir", "s3://models/cnn/dense", "--dataset", "digits", "--recipe",
                 str(work / "tiny.yaml"), "--out", str(work / "out"), "--no-latency", "--no-onnx", "--quiet",
                 "--no-track"]) == 0
    assert asked == ["s3://models/cnn/dense"]
    assert json.loads(capsys.readouterr().out)["out"] == str(work / "out")


def test_recipes_load_and_default_is_the_library_default():
    from pathlib import Path

    from idap.prune.config import Recipe

    recipes = Path(__file__).resolve().parents[2] / "recipes"
    assert Recipe.from_yaml(recipes / "default.yaml") == Recipe()
    demo = Recipe.from_yaml(recipes / "demo.yaml")
    assert demo.filter.steps < Recipe().filter.steps and demo.recovery.final_budget < Recipe().recovery.final_budget


def test_pipeline_run_threads_reach_the_steps(work, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen = {}
    monkeypatch.setattr(cli, "run_local", lambda name, arguments, **kw: seen.update(
        omp=os.environ.get("OMP_NUM_THREADS")) or {"outputs": {}, "pipeline_root": "r",
                                                                 "tracking_uri": "sqlite:///x", "seconds": 0})
    assert main(["pipeline", "run", "compress", "--threads", "1"]) == 0
    assert seen["omp"] == "1"
    with pytest.raises(SystemExit) as exc:
        main(["pipeline", "run", "compress", "--threads", "0"])
    assert exc.value.code == 2


def test_a_failing_local_run_fails_once_without_the_clusters_retries(work, capsys, monkeypatch):
    import pipelines._platform as platform

    stripped = []

    def spy(pipeline):
        local = platform_without(pipeline)
        stripped.append(all(not t.HasField("retry_policy")
                            for t in local.pipeline_spec.root.dag.tasks.values()))
        return local

    platform_without = platform.without_retries
    monkeypatch.setattr(platform, "without_retries", spy)
    missing = work / "no-such-data.npz"
    assert main(["pipeline", "run", "compress", "--param", f"dataset={missing}", "--quiet"]) == 1
    assert stripped == [True]  # kfp.local would otherwise run a failing step 3 times, minutes apart
    assert "no-such-data.npz" in capsys.readouterr().err
