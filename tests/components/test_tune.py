"""The Ray Tune search (components/tune.py and the _search_* modules): the search space checked before Ray starts, and real searches
on local Ray — digits, cnn_small, a tiny recipe, MLflow in the package's sqlite store — that check the
nested trial runs, the default recipe as first trial, ASHA stopping a trial early, a failing trial, the
Pareto front and resuming an interrupted search (``idap tune --resume``)."""

import json
import math
import os
import signal

import pytest
import yaml
from ray.tune import Callback

from components.services import ray_connect, search_results, tune, tune_trial
from components.services.search_space import DEFAULT_SPACE, SearchSpace, SearchSpaceError
from idap.prune.config import Recipe

TINY = {"calibration_size": 128, "validation_size": 256, "eval_batch_size": 256, "device": "cpu",
        "max_accuracy_drop": 30.0, "filter": {"steps": 3, "p0": 0.05},
        "recovery": {"step_budget": 5, "final_budget": 5, "batch_size": 64}}
SPACE = {"space": {"filter.p0": {"loguniform": [0.02, 0.3]}, "filter.alpha": {"uniform": [0.5, 3.0]}}}
FAIL_ALPHA = 2.999  # a trial with exactly this alpha raises (see flaky below)


# ---- the space, before any Ray -----------------------------------------------------------------
def test_space_parses_every_distribution_and_the_default_point():
    space = SearchSpace.from_dict({"objective": "multi", "num_samples": 3, "space": {
        "filter.p0": {"loguniform": [0.02, 0.2]}, "filter.steps": {"randint": [5, 30]},
        "filter.alpha": {"uniform": [0.5, 3.0]}, "recovery.lr": {"quniform": [0.0005, 0.002, 0.0005]},
        "filter.score_point": {"choice": ["pre", "post"]}}})
    base = Recipe()
    space.validate(base)
    assert space.objective == "multi" and space.num_samples == 3 and space.metric == "macs_reduction"
    assert space.default_point(base) == {"filter.p0": 0.05, "filter.steps": 20, "filter.alpha": 1.5,
                                         "recovery.lr": 0.001, "filter.score_point": "post"}
    recipe = space.recipe(base, {**space.default_point(base), "filter.steps": 7, "filter.score_point": "pre"})
    assert recipe.filter.steps == 7 and recipe.filter.score_point == "pre" and recipe.filter.p0 == 0.05
    domains = space.param_space()
    assert domains["filter.steps"].upper == 31  # the YAML's randint includes its upper bound, Tune's does not
    assert SearchSpace.from_dict(space.to_dict()) == replace_source(space)


def replace_source(space):
    from dataclasses import replace

    return replace(space, source="search space")


@pytest.mark.parametrize("space_file", sorted(p.name for p in DEFAULT_SPACE.parent.glob("*.yaml")))
@pytest.mark.parametrize("recipe_file", ["default.yaml", "demo.yaml", "resnet20-fashion-2x.yaml"])
def test_shipped_spaces_fit_the_shipped_recipes(space_file, recipe_file):
    space = SearchSpace.from_yaml(DEFAULT_SPACE.parent / space_file)
    space.validate(Recipe.from_yaml(DEFAULT_SPACE.parents[1] / recipe_file))


def test_default_space_covers_every_part_of_the_recipe():
    paths = set(SearchSpace.load("").paths)
    assert {"filter.p0", "filter.steps", "filter.alpha", "filter.ranking", "filter.score_point", "layer.epsilon",
            "layer.max_removals", "layer.target_share", "recovery.step_budget", "recovery.final_budget",
            "recovery.lambda_feat", "recovery.lambda_kd", "recovery.teacher", "max_accuracy_drop"} <= paths


@pytest.mark.parametrize("space, message", [
    ({"space": {"filter.p00": {"uniform": [0.1, 0.2]}}}, "filter.p00: unknown recipe field"),
    ({"space": {"filter.p0": {"uniform": [0.02, 1.5]}}}, "filter.p0: uniform value 1.5 is not valid: filter.p0 must be in (0, 1)"),
    ({"space": {"filter.steps": {"uniform": [5, 30]}}}, "filter.steps: uniform draws real numbers such as 14.25"),
    ({"space": {"filter.steps": {"uniform": [5.0, 30.0]}}}, "filter.steps must be an integer"),
    ({"space": {"filter.p0": {"uniform": [0.1, 0.2]}}}, "base recipe's value 0.05 lies outside uniform [0.1, 0.2]"),
    ({"space": {"filter.p0": {"uniform": [0.2, 0.1]}}}, "lower bound 0.2 must be below the upper bound 0.1"),
    ({"space": {"filter.p0": {"loguniform": [0.0, 0.1]}}}, "loguniform needs a lower bound > 0"),
    ({"space": {"filter.p0": {"normal": [0.0, 0.1]}}}, "unknown distribution 'normal'"),
    ({"space": {"filter.score_point": {"choice": ["pre", "mid", "post"]}}}, "choice value 'mid' is not valid"),
    ({"space": {"seed": {"randint": [0, 3]}}}, "seed cannot be searched: it changes the data splits"),
    ({"space": {"filter.p0": 0.1}}, "filter.p0 must be one distribution"),
    ({"space": {}}, "'space' must map at least one recipe field"),
    ({"filter.p0": {"uniform": [0.02, 0.2]}}, "unknown key(s) ['filter.p0']"),
    ({"objective": "pareto", "space": {"filter.p0": {"uniform": [0.02, 0.2]}}}, "objective must be one of"),
])
def test_bad_spaces_fail_naming_the_problem(space, message):
    with pytest.raises(SearchSpaceError) as error:
        SearchSpace.from_dict(space, source="s.yaml").validate(Recipe())
    assert message in str(error.value)


def test_cli_refuses_a_bad_space_with_exit_2_before_ray_starts(tmp_path, capsys):
    import ray

    from pipelines.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"space": {"filter.p0": {"loguniform": [0.02, 1.5]}}}))
    assert main(["tune", "--dataset", "digits", "--search-space", str(bad), "--experiment-dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "filter.p0" in err and "must be in (0, 1)" in err and "1.5" in err
    assert not ray.is_initialized() and not (tmp_path / "x").exists()


def test_pareto_front_is_exactly_the_non_dominated_points():
    import random

    rng = random.Random(0)
    points = [{"val_acc": rng.choice([90.0, 91.0, 92.0, 93.0]), "macs_reduction": rng.uniform(1, 3)} for _ in range(40)]
    front = search_results.pareto_front(points)
    dominated = [p for p in points if any(q["val_acc"] >= p["val_acc"] and q["macs_reduction"] >= p["macs_reduction"]
                                          and q != p for q in points)]
    assert front and all(p not in dominated for p in front)
    assert all(p in front for p in points if p not in dominated)


def StepRecord(stage, index, action, *, params, macs, val_acc, accepted=True):  # noqa: N802
    """The fields of a trajectory step the trial's progress reads."""
    from types import SimpleNamespace

    return SimpleNamespace(stage=stage, index=index, action=action, params=params, macs=macs, val_acc=val_acc,
                           accepted=accepted)


def test_a_trial_over_budget_scores_infeasible_and_never_wins():
    progress = tune_trial.TrialProgress(dense_val_acc=90.0, dense_macs=1000, dense_params=100, budget_pp=1.0, slack_pp=1.0,
                               reduction="macs", started=0.0)
    first = progress.step(StepRecord("filter", 0, "rollback", params=20, macs=100, val_acc=70.0, accepted=False))
    assert first["macs_reduction"] == 1.0 and first["val_acc"] == 90.0  # rolled back: still the dense model
    mid = progress.step(StepRecord("filter", 0, "prune", params=50, macs=250, val_acc=88.5))
    assert mid["feasible"] == 1.0 and mid["score"] == 4.0  # mid-run the recipe's slack counts
    rolled = progress.step(StepRecord("filter", 1, "rollback", params=10, macs=100, val_acc=80.0, accepted=False))
    assert rolled["macs_reduction"] == 4.0  # a rolled-back step is not the model carried on
    final = progress.finish(StepRecord("finetune", 0, "finetune", params=50, macs=250, val_acc=88.5), 1.0)
    assert final["feasible"] == 0.0 and final["score"] == tune_trial.INFEASIBLE  # the final model: budget only
    space = SearchSpace.from_dict(SPACE)
    trials = [{"status": "complete", "feasible": False, "macs_reduction": 9.0, "val_acc": 80.0, "index": 0},
              {"status": "complete", "feasible": True, "macs_reduction": 2.0, "val_acc": 89.5, "index": 1},
              {"status": "stopped", "feasible": False, "macs_reduction": 5.0, "val_acc": 89.9, "index": 2}]
    assert search_results.select_winner(space, [], trials) is trials[1]
    assert search_results.select_winner(space, [], trials[:1]) is None


def test_asha_never_stops_the_default_recipe():
    from types import SimpleNamespace

    asha = tune.SparingASHA(spared={"filter.p0": 0.05}, time_attr="training_iteration", metric="score", mode="max",
                             max_t=100, grace_period=1, reduction_factor=2)
    trials = [SimpleNamespace(trial_id=f"t{i}", config={"filter.p0": p}) for i, p in enumerate([0.3, 0.05, 0.02])]
    for t in trials:
        asha.on_trial_add(None, t)
    decisions = [asha.on_trial_result(None, t, {"training_iteration": 1, "score": score})
                 for t, score in zip(trials, [3.0, 1.0, 1.1], strict=True)]
    # both later trials fall below the rung's cutoff; only the one that is not the default is stopped
    assert decisions == ["CONTINUE", "CONTINUE", "STOP"]


def test_a_searched_delta_above_the_budget_becomes_stage_slack():
    recipe = Recipe(max_accuracy_drop=2.5, stage_slack=0.5)
    held = search_results.held_to_budget(recipe, 1.0)
    assert held.max_accuracy_drop == 1.0 and math.isclose(held.stage_budget, recipe.stage_budget)
    strict = Recipe(max_accuracy_drop=0.5)
    assert search_results.held_to_budget(strict, 1.0) == strict


# ---- real searches on local Ray ----------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module (starting it costs ~7 s and ~3 GB), always shut down."""
    import ray

    owned = ray_connect.start_ray(num_cpus=2)
    yield
    if owned:
        ray.shutdown()


@pytest.fixture(scope="module")
def dense_setup(tmp_path_factory):
    from idap.bundle import save_bundle
    from idap.cli import train_dense
    from idap.data import load_dataset

    base = Recipe.from_dict(TINY)
    data = load_dataset("digits", seed=0, calibration_size=base.calibration_size, validation_size=base.validation_size)
    dense, _ = train_dense("cnn_small", data, epochs=10, seed=0, device="cpu", progress=False)
    root = tmp_path_factory.mktemp("tune-dense")
    save_bundle(dense, root / "dense", input_shape=(data.in_channels, data.image_size, data.image_size))
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return {"base": base, "data": data, "dense": dense, "dense_dir": root / "dense", "recipe_file": root / "tiny.yaml"}


def flaky_compress(dense, data, recipe, **kw):
    """The library's compress, except that one configuration raises (a trial made to fail)."""
    from idap.prune.compress import compress

    if recipe.filter.alpha == FAIL_ALPHA:
        raise RuntimeError("trial made to fail")
    return compress(dense, data, recipe, **kw)


def _children(run_id):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    parent = client.get_run(run_id)
    return client, client.search_runs([parent.info.experiment_id],
                                      filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")


@pytest.fixture(scope="module")
def constrained(tracking_env, ray_session, dense_setup, tmp_path_factory):
    """5 trials one at a time: the default, an aggressive schedule, one that raises, a timid one (ASHA stops
    it at the first rung: the two before it pruned more) and one sampled by Optuna."""
    s = dense_setup
    space = SearchSpace.from_dict({**SPACE, "objective": "constrained", "num_samples": 5})
    result = tune.run_search(
        data=s["data"], dense=s["dense"], base=s["base"], space=space,
        experiment_dir=tmp_path_factory.mktemp("tune") / "constrained", max_concurrent=1, seed=0,
        measure_latency=True, compress_fn=flaky_compress, run_name="constrained-test",
        extra_points=[{"filter.p0": 0.3}, {"filter.alpha": FAIL_ALPHA}, {"filter.p0": 0.02}])
    return result


slow = pytest.mark.slow


@slow
def test_the_default_recipe_is_the_first_trial(constrained, dense_setup):
    first = constrained.trials[0]
    assert first["is_default"] and first["status"] == "complete"
    assert first["config"] == {"filter.p0": 0.05, "filter.alpha": 1.5}
    assert constrained.default is first and sum(t["is_default"] for t in constrained.trials) == 1


@slow
def test_every_trial_is_a_nested_mlflow_run_with_its_steps(constrained):
    client, children = _children(constrained.search_run_id)
    search = client.get_run(constrained.search_run_id)
    assert search.info.status == "FINISHED" and search.data.tags["idap.kind"] == "search"
    assert search.data.params["search.objective"] == "constrained"
    trials = [r for r in children if r.data.tags.get("idap.kind") == "trial"]
    assert sorted(r.data.tags["idap.trial_id"] for r in trials) == sorted(t["trial_id"] for t in constrained.trials)
    expected = {"complete": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}
    for t in constrained.trials:
        [run] = [r for r in trials if r.data.tags["idap.trial_id"] == t["trial_id"]]
        assert run.info.status == expected[t["status"]], t
        assert float(run.data.params["filter.p0"]) == pytest.approx(t["config"]["filter.p0"])
        assert run.data.tags["idap.default_recipe"] == str(t["is_default"]).lower()
        if t["status"] != "failed":
            history = client.get_metric_history(run.info.run_id, "macs_reduction")
            assert len(history) == t["reports"] and [m.step for m in history] == list(range(1, t["reports"] + 1))
    names = {a.path for a in client.list_artifacts(constrained.search_run_id, "search")}
    assert {"search/pareto.json", "search/pareto.csv", "search/pareto.png", "search/best-recipe.yaml"} <= names


@slow
def test_asha_stopped_a_trial_before_its_last_step(constrained):
    [timid] = [t for t in constrained.trials if t["config"]["filter.p0"] == 0.02]
    complete = [t for t in constrained.trials if t["status"] == "complete"]
    assert timid["status"] == "stopped" and timid["checkpoint"] is None
    # a complete trial reports every pruning step and then its final model: the stopped one ended before that
    assert timid["reports"] < max(t["reports"] for t in complete)
    assert timid not in constrained.front and constrained.winner is not timid


@slow
def test_a_trial_that_raises_is_failed_and_the_search_goes_on(constrained):
    [failed] = [t for t in constrained.trials if t["status"] == "failed"]
    assert failed["config"]["filter.alpha"] == FAIL_ALPHA and "trial made to fail" in failed["error"]
    later = constrained.trials[constrained.trials.index(failed) + 1:]
    assert later and all(t["status"] in ("complete", "stopped") for t in later)
    assert constrained.summary["trials"]["failed"] == 1


@slow
def test_the_winner_is_the_largest_feasible_reduction_and_its_recipe_is_saved(constrained):
    w = constrained.winner
    feasible = [t for t in constrained.trials if t["status"] == "complete" and t["feasible"]]
    assert w in feasible and w["macs_reduction"] == max(t["macs_reduction"] for t in feasible)
    assert w["test_acc"] is not None and w["speedup_b1"] > 0  # test and latency after the search, winners only
    assert all(t.get("test_acc") is None for t in constrained.trials if t not in constrained.front
               and not t["is_default"] and t is not w)
    saved = Recipe.from_yaml(constrained.files["best_recipe"])
    assert saved == constrained.winner_recipe and saved.filter.p0 == pytest.approx(w["config"]["filter.p0"])
    doc = json.loads(constrained.files["json"].read_text())
    assert doc["winner"] == w["trial_id"] and len(doc["trials"]) == 5
    assert constrained.files["plot"].stat().st_size > 1000


@slow
def test_the_result_files_read_back_as_the_same_result(constrained):
    """What a search run as a Ray job hands back through S3: read_results rebuilds the SearchResult."""
    back = search_results.read_results(constrained.files["json"].parent, search_run_id=constrained.search_run_id)
    assert back.winner == json.loads(json.dumps(constrained.winner, default=str))
    assert back.winner_recipe == constrained.winner_recipe and back.base == constrained.base
    assert [t["trial_id"] for t in back.front] == [t["trial_id"] for t in constrained.front]
    assert replace_source(back.space) == replace_source(constrained.space)
    assert back.summary == constrained.summary and back.files["markdown"].is_file()
    nodes = {t["node_id"] for t in back.trials if t["status"] == "complete"}
    assert len(nodes) == 1 and all(nodes)  # every trial says where it ran: here, the one local node


def test_result_files_that_are_not_a_search_are_refused(tmp_path):
    with pytest.raises(SearchSpaceError, match="holds no pareto.json"):
        search_results.read_results(tmp_path, search_run_id="x")
    for name in ("pareto.json", "best-recipe.yaml", "search.md"):
        (tmp_path / name).write_text("{}")
    with pytest.raises(SearchSpaceError, match="is not a search's pareto.json"):
        search_results.read_results(tmp_path, search_run_id="x")


def test_the_cluster_side_gets_the_settings_but_never_a_credential(monkeypatch):
    for key, value in {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "AWS_ENDPOINT_URL": "http://s3:9000",
                       "IDAP_BUCKET": "b", "AWS_SECRET_ACCESS_KEY": "s3cr3t", "AWS_ACCESS_KEY_ID": "k",
                       "MLFLOW_TRACKING_PASSWORD": "pw"}.items():
        monkeypatch.setenv(key, value)
    env = ray_connect.cluster_env()
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and env["IDAP_BUCKET"] == "b"
    assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert not set(ray_connect.SECRET_ENV) & set(env) and "s3cr3t" not in json.dumps(env)


def test_tune_storage_local_or_s3(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert ray_connect.tune_storage(None, tmp_path / "exp") == (str(tmp_path), None)
    path, fs = ray_connect.tune_storage("s3://bucket/some/prefix/", tmp_path / "exp")
    assert path == "bucket/some/prefix" and fs.type_name == "s3"


class InterruptAfter(Callback):
    """Ctrl-C, as a user would press it, once ``n`` trials have ended (once: a flag file survives the restore)."""

    def __init__(self, n, flag):
        self.n, self.flag, self.done = n, str(flag), 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        if self.done >= self.n and not os.path.exists(self.flag):
            open(self.flag, "w").close()
            os.kill(os.getpid(), signal.SIGINT)


@slow
def test_multi_objective_front_and_an_interrupted_search_resumes(tracking_env, ray_session, dense_setup, tmp_path,
                                                                 capsys):
    """Multi-objective (no scheduler) with 4 trials, interrupted after 2; `idap tune --resume` runs only the rest."""
    from pipelines.cli import main

    s = dense_setup
    space = SearchSpace.from_dict({**SPACE, "objective": "multi", "num_samples": 4})
    exp = tmp_path / "multi"
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(tune.SearchInterrupted, match="resume it with `idap tune --resume"):
            tune.run_search(data=s["data"], dense=s["dense"], base=s["base"], space=space, experiment_dir=exp,
                             max_concurrent=1, measure_latency=False, run_name="resume-test",
                             sources={"dataset": "digits", "data_root": None, "train_limit": None, "test_limit": None,
                                      "model_dir": str(s["dense_dir"])},
                             callbacks=[InterruptAfter(2, tmp_path / "interrupted")])
    finally:
        signal.signal(signal.SIGINT, handler)
    state = tune.read_state(exp)
    client, before = _children(state["search_run_id"])
    finished = {r.data.tags["idap.trial_id"]: r for r in before if r.info.status == "FINISHED"}
    assert len(finished) >= 2 and client.get_run(state["search_run_id"]).info.status == "KILLED"
    val_before = {tid: r.data.metrics.get("val_acc") for tid, r in finished.items()}

    assert main(["tune", "--resume", "--experiment-dir", str(exp), "--no-latency"]) == 0
    printed = json.loads(capsys.readouterr().out)
    result = json.loads((exp / "results" / "pareto.json").read_text())
    trials = result["trials"]
    assert len(trials) == 4 and all(t["status"] == "complete" for t in trials)  # no scheduler in multi mode
    assert result["summary"]["resumed"] is True and printed["trials"]["complete"] == 4
    _, after = _children(state["search_run_id"])
    for tid in finished:  # the trials finished before the interrupt were not run again
        runs = [r for r in after if r.data.tags.get("idap.trial_id") == tid]
        assert len(runs) == 1 and runs[0].info.run_id == finished[tid].info.run_id
        assert runs[0].data.metrics.get("val_acc") == val_before[tid]
    by_id = {t["trial_id"]: t for t in trials}
    assert all(by_id[tid]["trial_started_at"] < min(by_id[o]["trial_started_at"] for o in by_id if o not in finished)
               for tid in finished)
    assert client.get_run(state["search_run_id"]).info.status == "FINISHED"
    # the front is non-dominated among the completed trials, and every non-member is dominated by a member
    front = [by_id[tid] for tid in result["front"]]
    keys = ("val_acc", "macs_reduction")
    for p in trials:
        beaten = any(all(q[k] >= p[k] for k in keys) and any(q[k] > p[k] for k in keys) for q in trials)
        assert (p in front) != beaten, p
    assert printed["winner"]["trial_id"] in result["front"]


@slow
def test_idap_tune_trains_a_dense_model_and_prints_the_winner(tracking_env, ray_session, dense_setup, tmp_path, capsys):
    """`idap tune --smoke-test` end to end through the console script: 2 trials, the dense model trained first
    and kept in the experiment directory, the winner and its recipe file printed."""
    from pipelines.cli import main

    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    exp = tmp_path / "smoke"
    assert main(["tune", "--dataset", "digits", "--model", "cnn_small", "--train-epochs", "2",
                 "--recipe", str(dense_setup["recipe_file"]), "--search-space", str(tmp_path / "space.yaml"),
                 "--smoke-test", "--no-latency", "--max-concurrent", "1", "--experiment-dir", str(exp)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["trials"] == {"complete": 2, "stopped": 0, "failed": 0} or sum(printed["trials"].values()) == 2
    assert Recipe.from_yaml(printed["best_recipe"]).filter.steps == TINY["filter"]["steps"]
    state = tune.read_state(exp)
    assert state["sources"]["model_dir"] == str((exp / "dense").absolute()) and (exp / "dense" / "architecture.json").is_file()
    assert state["sources"]["train_limit"] == 512  # --smoke-test shrinks the data too
    assert main(["tune", "--dataset", "digits", "--experiment-dir", str(exp)]) == 2  # a second search there: refused
    assert "already holds a search" in capsys.readouterr().err


KILL_ALPHA = 2.998  # a trial with exactly this alpha kills its own Ray worker process (SIGKILL)


def killing_compress(dense, data, recipe, **kw):
    """The library's compress, except that one configuration dies as an OOM-killed worker would."""
    from idap.prune.compress import compress

    if recipe.filter.alpha == KILL_ALPHA:
        os.kill(os.getpid(), signal.SIGKILL)
    return compress(dense, data, recipe, **kw)


@slow
def test_a_ray_worker_killed_during_a_trial_fails_that_trial_and_the_search_finishes(
        tracking_env, ray_session, dense_setup, tmp_path):
    s = dense_setup
    space = SearchSpace.from_dict({**SPACE, "objective": "constrained", "num_samples": 3})
    result = tune.run_search(
        data=s["data"], dense=s["dense"], base=s["base"], space=space, experiment_dir=tmp_path / "killed",
        max_concurrent=1, seed=0, measure_latency=False, compress_fn=killing_compress, run_name="worker-killed",
        extra_points=[{"filter.alpha": KILL_ALPHA}, {"filter.p0": 0.3}])
    [killed] = [t for t in result.trials if t["config"]["filter.alpha"] == KILL_ALPHA]
    assert killed["status"] == "failed" and killed["error"]
    after = result.trials[result.trials.index(killed) + 1:]
    assert after and all(t["status"] in ("complete", "stopped") for t in after)  # a new worker took over
    assert result.winner is not None and result.winner["status"] == "complete"
    client, children = _children(result.search_run_id)
    statuses = {r.data.params.get("filter.alpha"): r.info.status for r in children}
    assert statuses.get(str(KILL_ALPHA)) == "FAILED"
    assert all(st in ("FINISHED", "KILLED", "FAILED") for st in statuses.values())  # nothing left RUNNING
