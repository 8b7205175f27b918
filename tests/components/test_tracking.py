"""components.services.tracking and components.services.registry on an embedded sqlite store: run tree, logging,
registration, promotion by rule.

Models are tiny random ``cnn_small`` bundles at 8x8; reports are built with ``idap.report.evaluate.build_report``
from chosen figures, so every promotion decision is known in advance.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from safetensors.numpy import load_file, save_file

from components.services import logged_model, promotion, registry, tracking
from components.services import mlflow_backend as mlflow_conn
from components.services.mlflow_backend import TrackingError
from components.services.promotion import PromotionError
from components.services.tracking import StepTracker
from idap.bundle import load_bundle, save_bundle
from idap.bundle.format import BundleError
from idap.models import create_model
from idap.prune.config import FilterStageConfig, Recipe
from idap.prune.state import StepRecord
from idap.report import build_report
from idap.report.files import write_report

REPO = Path(__file__).resolve().parents[2]
RECIPE = Recipe(max_accuracy_drop=1.0, filter=FilterStageConfig(steps=3))
NAME = "cnn-digits"


# --- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one torch thread. On a shared 2-core machine idle OpenMP threads spin against other jobs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    """An MLflow database with its schema, made once: creating the tables costs ~5 s per database."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    root = tmp_path_factory.mktemp("template")
    store = SqlAlchemyStore(f"sqlite:///{root / 'mlflow.db'}", str(root / "unused"))
    store.engine.dispose()
    return root / "mlflow.db"


@pytest.fixture
def workdir(tmp_path, monkeypatch, sqlite_template):
    """The embedded default: IDAP_WORKDIR with a fresh copy of the template database."""
    for key in ("MLFLOW_TRACKING_URI", "IDAP_ARTIFACT_ROOT", "IDAP_EXPERIMENT", "MLFLOW_HTTP_REQUEST_TIMEOUT",
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(key, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(sqlite_template, work / "mlflow.db")
    monkeypatch.setenv("IDAP_WORKDIR", str(work))
    mlflow_conn.configure()
    return work


@pytest.fixture
def client(workdir):
    return MlflowClient()


@pytest.fixture(scope="session")
def bundles(tmp_path_factory):
    """dense, good, worse, other: random cnn_small bundles (distinct weights, so distinct digests)."""
    root = tmp_path_factory.mktemp("bundles")
    out = {}
    for seed, name in enumerate(("dense", "good", "worse", "other")):
        torch.manual_seed(seed)
        out[name] = save_bundle(create_model("cnn_small", 10, 1, 8), root / name, input_shape=(1, 8, 8))
    return out


def make_report(*, val=94.6, test=93.9, latency=0.5, macs=50_000, dense_val=95.0, steps=()):
    dense = {"val_acc": dense_val, "test_acc": 94.0, "params": 20_000, "macs": 100_000, "latency_ms_b1": 1.0,
             "throughput_b64": 9000.0, "device": "cpu", "threads": 2}
    compressed = {"val_acc": val, "test_acc": test, "params": 9_000, "macs": macs, "latency_ms_b1": latency,
                  "throughput_b64": 15000.0, "device": "cpu", "threads": 2}
    profile = {"layers": [{"name": "features.0", "mean": 0.4}, {"name": "features.3", "mean": 0.2}],
               "blocks": {"features.3": 0.1}, "block_metric": "divergence"}
    return build_report(dense=dense, compressed=compressed, steps=list(steps), recipe=RECIPE.to_dict(),
                        dataset={"name": "digits", "content_hash": "abc"}, model_name="cnn_small", profile=profile)


def register(bundles, digits, model="good", parent=None, name=NAME, **report):
    return registry.register_and_promote(
        parent_run_id=parent, model_dir=bundles[model], dense_dir=bundles["dense"], report=make_report(**report),
        recipe=RECIPE, dataset=digits.describe(), registered_name=name, base_model=str(bundles["dense"]))


def champion(client, name=NAME):
    return str(client.get_model_version_by_alias(name, "champion").version)


def alias_version(client, alias, name=NAME):
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def versions(client, name=NAME):
    return sorted(str(mv.version) for mv in client.search_model_versions(f"name = '{name}'"))


def fail_with(error: Exception):
    def fail(*args, **kwargs):
        raise error

    return fail


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def python(code: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter with this test's environment (IDAP_WORKDIR, tracking URI)."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout, env=subprocess_env())
    assert done.returncode == 0, f"subprocess failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return done


# --- the run tree -------------------------------------------------------------------------------------------


def test_configure_embedded_default(workdir, client):
    settings = mlflow_conn.configure()
    assert settings.tracking_uri == f"sqlite:///{workdir / 'mlflow.db'}" == mlflow.get_tracking_uri()
    experiment = client.get_experiment_by_name("idap")
    assert experiment.artifact_location == (workdir / "mlartifacts").as_uri()
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on its runs table
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30" and os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"


def test_nested_runs_across_processes(workdir, client, digits, tmp_path):
    parent = tracking.start_pipeline_run("compress digits", tags={"idap.pipeline": "compress"})
    # Step 1 in another process, knowing only the parent's id.
    python("""
        import sys
        from components.services.tracking import step_run
        with step_run(sys.argv[1], "data", params={"dataset": "digits"}) as t:
            t.log_metrics({"train_size": 1000})
    """, parent)
    # Step 2 here: recipe, per-step metrics, dataset, report with plots.
    records = [StepRecord("dense", 0, "dense", 20_000, 100_000, 95.0), StepRecord("filter", 1, "prune", 15_000, 70_000, 94.8),
               StepRecord("filter", 2, "prune", 11_000, 55_000, 94.1), StepRecord("finetune", 0, "finetune", 11_000, 55_000, 94.7)]
    report = make_report(steps=[r.to_json() for r in records])
    write_report(report, tmp_path / "report")
    with tracking.step_run(parent, "compress", params={"model": "cnn_small"}) as t:
        assert isinstance(t, StepTracker)
        t.log_recipe(RECIPE)
        t.log_dataset(digits.describe())
        for rec in records:
            t.on_step(rec)
        t.log_report(report, tmp_path / "report")
        t.log_artifacts(tmp_path / "report" / "report.md", "extra")
    tracking.finish_pipeline_run(parent)

    children = client.search_runs([client.get_run(parent).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent}'")
    by_step = {r.data.tags["idap.step"]: r for r in children}
    assert set(by_step) == {"data", "compress"}
    assert all(r.info.status == "FINISHED" for r in children) and client.get_run(parent).info.status == "FINISHED"
    assert by_step["data"].data.params == {"dataset": "digits"}

    run = by_step["compress"]
    flat = {k: str(v) for k, v in RECIPE.flat().items()}
    assert {k: run.data.params[k] for k in flat} == flat  # the whole recipe
    assert run.data.tags["idap.recipe_digest"] == RECIPE.digest()
    assert run.data.tags["idap.dataset_hash"] == digits.content_hash
    assert run.data.params["dataset.size.validation"] == "256"
    assert run.inputs.dataset_inputs[0].dataset.name == "digits"
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(0, 95.0), (1, 94.8), (2, 94.1), (3, 94.7)]
    assert [m.value for m in sorted(client.get_metric_history(run.info.run_id, "stage"), key=lambda m: m.step)] == [0, 1, 1, 3]
    assert run.data.metrics["compressed_latency_ms_b1"] == 0.5 and run.data.metrics["macs_reduction"] == 2.0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/report.json", "report/report.md", "report/trajectory.png", "report/divergence_profile.png",
            "report/divergence_profile.json"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"recipe.yaml", "extra"}


def test_failing_step_marks_step_and_pipeline_failed(workdir, client):
    parent = tracking.start_pipeline_run("failing")
    with pytest.raises(RuntimeError, match="boom"), tracking.step_run(parent, "compress") as t:
        raise RuntimeError("boom")
    child = client.get_run(t.run_id)
    assert child.info.status == "FAILED" and child.data.tags["idap.error"] == "RuntimeError: boom"
    assert client.get_run(parent).info.status == "FAILED"
    assert client.get_run(parent).data.tags["idap.failed_step"] == "compress"
    tracking.finish_pipeline_run(parent)  # the pipeline's end does not paper over the failure
    assert client.get_run(parent).info.status == "FAILED"
    with tracking.step_run(None, "standalone") as t:  # `idap compress` outside a pipeline: a top-level run
        pass
    assert "mlflow.parentRunId" not in client.get_run(t.run_id).data.tags


# --- registration and promotion -----------------------------------------------------------------------------


@pytest.mark.slow
def test_register_tags_and_pickle_free_load_in_fresh_process(workdir, client, bundles, digits, tmp_path):
    parent = tracking.start_pipeline_run("register")
    started = time.perf_counter()
    result = register(bundles, digits, parent=parent)
    seconds = time.perf_counter() - started
    assert result["decision"] == "champion" and result["champion"] and result["created"]
    assert result["aliases"] == ["challenger", "champion"]
    mv = client.get_model_version(NAME, result["version"])
    tags = mv.tags
    for key in ("idap.base_model", "idap.base_model_version", "idap.dense_model_uri", "idap.dataset", "idap.dataset_hash",
                "idap.recipe_digest", "idap.params", "idap.macs", "idap.val_acc", "idap.test_acc", "idap.dense_val_acc",
                "idap.latency_ms_b1", "idap.code_version", "idap.pipeline_run_id", "idap.bundle_digest", "idap.promotion"):
        assert tags.get(key) not in (None, ""), key
    assert tags["idap.dataset_hash"] == digits.content_hash and tags["idap.recipe_digest"] == RECIPE.digest()
    assert tags["idap.pipeline_run_id"] == parent and float(tags["idap.latency_ms_b1"]) == 0.5
    assert tags["idap.base_model"] == str(bundles["dense"]) and tags["idap.code_version"] != "unknown"
    register_run = client.get_run(mv.run_id)
    assert register_run.data.tags["mlflow.parentRunId"] == parent and register_run.info.status == "FINISHED"
    assert register_run.data.metrics["dense_val_acc"] == 95.0  # the dense baseline's figures beside it
    print(f"register_and_promote: {seconds:.1f} s, of which log_model x2: "
          f"{register_run.data.metrics['log_model_seconds']:.1f} s")

    # The dense baseline is logged in the same run, as a loadable model too.
    dense = mlflow.pyfunc.load_model(tags["idap.dense_model_uri"])
    probe = load_file(str(bundles["dense"] / "parity.safetensors"))
    assert np.allclose(dense.predict(probe["input"]), probe["output"], atol=1e-5)

    # No pickle anywhere in the logged model ...
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion", dst_path=str(tmp_path / "dl")))
    assert not list(local.rglob("*.pkl")) and (local / "mlflow_model.py").is_file()
    assert (local / "artifacts" / "good" / "weights.safetensors").is_file() and (local / "code" / "idap" / "bundle" / "store.py").is_file()
    requirements = (local / "requirements.txt").read_text()
    assert "torch==" in requirements and "safetensors==" in requirements
    # ... and a fresh interpreter that cannot unpickle loads it by alias and reproduces the bundle.
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    done = python("""
        import pickle, sys
        def refuse(*args, **kwargs):
            raise AssertionError("something tried to unpickle")
        class NoUnpickler(pickle.Unpickler):
            __init__ = refuse
        pickle.load, pickle.loads, pickle.Unpickler = refuse, refuse, NoUnpickler
        import json, mlflow, numpy as np
        model = mlflow.pyfunc.load_model(sys.argv[1])
        print(json.dumps(model.predict(np.load(sys.argv[2])).tolist()))
    """, f"models:/{NAME}@champion", str(tmp_path / "x.npy"))
    got = np.array(json.loads(done.stdout.strip().splitlines()[-1]), dtype=np.float32)
    with torch.no_grad():
        expected = load_bundle(bundles["good"])(torch.from_numpy(x)).numpy()
    assert got.shape == (5, 10) and np.abs(got - expected).max() <= 1e-5


def test_worse_model_stays_challenger_and_reregistration_is_idempotent(workdir, client, bundles, digits):
    first = register(bundles, digits, "good", latency=0.5)
    second = register(bundles, digits, "worse", latency=0.8)  # slower at the same accuracy
    assert second["decision"] == "challenger" and not second["champion"] and second["previous_champion"] == first["version"]
    assert "not lower" in second["reason"]
    assert champion(client) == first["version"] and alias_version(client, "challenger") == second["version"]
    again = register(bundles, digits, "worse", latency=0.8)
    assert again["version"] == second["version"] and not again["created"]
    assert versions(client) == ["1", "2"]


@pytest.mark.parametrize(("objective", "candidate", "expected"), [
    ("latency", {"latency_ms_b1": 0.4, "test_acc": 93.85}, True),   # faster, within the 0.1 pp tolerance
    ("latency", {"latency_ms_b1": 0.4, "test_acc": 93.7}, False),   # faster but 0.2 pp worse
    ("latency", {"latency_ms_b1": 0.6, "test_acc": 95.0}, False),   # more accurate but slower
    ("macs", {"macs": 40_000, "test_acc": 93.9}, True),
    ("macs", {"macs": 60_000, "test_acc": 93.9}, False),
    ("accuracy", {"test_acc": 94.0}, True),
    ("accuracy", {"test_acc": 93.9, "latency_ms_b1": 0.4}, True),   # tie broken by latency
    ("accuracy", {"test_acc": 93.8}, False),
])
def test_objectives(objective, candidate, expected):
    champ = {"latency_ms_b1": 0.5, "test_acc": 93.9, "macs": 50_000}
    assert promotion.beats({**champ, **candidate}, champ, objective, 0.1)[0] is expected


def test_budget_violation_never_becomes_champion(workdir, client, bundles, digits):
    result = register(bundles, digits, "worse", val=93.5, latency=0.1)  # 1.5 pp drop > 1.0 budget
    assert result["decision"] == "rejected" and "exceeds the budget" in result["reason"]
    assert alias_version(client, "champion") is None and alias_version(client, "challenger") == result["version"]
    good = register(bundles, digits, "good", latency=0.5)
    assert good["decision"] == "champion"
    with pytest.raises(PromotionError, match="exceeds the budget.*force"):
        registry.promote(NAME, result["version"])
    assert champion(client) == good["version"]


@pytest.mark.slow
def test_concurrent_promotions_end_on_the_better_model(workdir, client, bundles, digits, tmp_path):
    """Two processes register at once; whatever the interleaving, the faster model ends as champion."""
    results = race_two_registrations(tmp_path, bundles, digits, NAME)
    assert versions(client) == ["1", "2"]
    assert champion(client) == results["good"]["version"], results
    winner = client.get_model_version(NAME, results["good"]["version"])
    assert winner.tags["idap.bundle_digest"] == logged_model.bundle_digest(bundles["good"])


def test_failed_registration_creates_no_version_and_moves_no_alias(workdir, client, bundles, digits, tmp_path,
                                                                     monkeypatch):
    first = register(bundles, digits, "worse", latency=0.9)
    # 1. A bundle whose parity probe no longer matches its weights.
    broken = shutil.copytree(bundles["good"], tmp_path / "broken")
    probe = load_file(str(broken / "parity.safetensors"))
    save_file({"input": probe["input"], "output": probe["output"] + 1.0}, str(broken / "parity.safetensors"))
    with pytest.raises(BundleError, match="parity"):
        registry.register_and_promote(parent_run_id=None, model_dir=broken, dense_dir=bundles["dense"],
                                      report=make_report(latency=0.1), recipe=RECIPE, dataset=digits.describe(),
                                      registered_name=NAME, base_model="dense")
    # 2. Logging the dense model fails after the compressed one was logged.
    real_log = registry.log_bundle_model

    def log_then_fail(run_id, bundle_dir, name, checked):
        if name == "dense_model":
            raise OSError("artifact store full")
        return real_log(run_id, bundle_dir, name, checked)

    parent = tracking.start_pipeline_run("doomed")
    with monkeypatch.context() as patch, pytest.raises(OSError, match="artifact store full"):
        patch.setattr(registry, "log_bundle_model", log_then_fail)
        register(bundles, digits, "good", parent=parent, latency=0.1)
    assert client.get_run(parent).info.status == "FAILED"
    # 3. A failed pipeline run is refused outright.
    with pytest.raises(PromotionError, match="FAILED: a failed run never registers"):
        register(bundles, digits, "good", parent=parent, latency=0.1)
    # 4. Version creation fails.
    with monkeypatch.context() as patch, pytest.raises(OSError, match="db down"):
        patch.setattr(MlflowClient, "create_model_version", fail_with(OSError("db down")))
        register(bundles, digits, "good", latency=0.1)
    # 5. The version is created but the first alias cannot be set: the version is removed again.
    with monkeypatch.context() as patch, pytest.raises(OSError, match="lost"):
        patch.setattr(MlflowClient, "set_registered_model_alias", fail_with(OSError("lost")))
        register(bundles, digits, "good", latency=0.1)
    assert versions(client) == [first["version"]]
    assert champion(client) == first["version"] and alias_version(client, "challenger") == first["version"]


def test_manual_promotion_by_rule_and_forced(workdir, client, bundles, digits):
    good = register(bundles, digits, "good", latency=0.5)
    worse = register(bundles, digits, "worse", latency=0.8)
    with pytest.raises(PromotionError, match=r"version 2 is not promoted: not lower: latency_ms_b1 0.8 ms vs 0.5 ms.*force"):
        registry.promote(NAME, worse["version"])
    assert champion(client) == good["version"]
    result = registry.promote(NAME, worse["version"], force=True, reason="rollback drill")
    assert result["champion"] and champion(client) == worse["version"]
    tags = client.get_model_version(NAME, worse["version"]).tags
    assert tags["idap.promotion"] == "manual" and tags["idap.promotion_forced"] == "true"
    assert tags["idap.promotion_reason"] == "rollback drill" and tags["idap.previous_champion"] == good["version"]
    # By the rule, the faster model may be promoted back by hand without force.
    assert registry.promote(NAME, good["version"], reason="back")["champion"]
    assert client.get_model_version(NAME, good["version"]).tags["idap.promotion_forced"] == "false"
    with pytest.raises(PromotionError, match="has no version '9'"):
        registry.promote(NAME, "9")


def test_unreachable_server_fails_fast_with_a_clear_error(monkeypatch, tmp_path):
    from tests.integration.services import closed_port

    uri = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("IDAP_WORKDIR", str(tmp_path))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    started = time.monotonic()
    with pytest.raises(TrackingError, match=rf"the MLflow tracking server {uri} is unreachable"):
        tracking.start_pipeline_run("nowhere")
    assert time.monotonic() - started < 15


def test_compare_and_set_repairs_a_stale_overwrite(workdir, client):
    """Without a lock (a server): B read "no champion", A became champion, then B's stale write landed.
    The re-check after a write sees A among the contenders and puts the alias back on the better model."""
    client.create_registered_model("race")
    figures = {"idap.val_acc_drop_pp": "0.4", "idap.max_accuracy_drop": "1.0", "idap.test_acc": "93.9",
               "idap.contender_at": f"{time.time():.3f}"}
    fast = client.create_model_version("race", "file:///nowhere/a", tags={**figures, "idap.latency_ms_b1": "0.5"})
    slow = client.create_model_version("race", "file:///nowhere/b", tags={**figures, "idap.latency_ms_b1": "0.8"})
    client.set_registered_model_alias("race", "champion", slow.version)  # the stale write
    final, first = registry._settle_champion(client, "race", "latency", 0.1)
    assert str(first.version) == str(slow.version) and str(final.version) == str(fast.version)
    assert champion(client, "race") == str(fast.version)
    # A forced manual decision clears the contenders, so the loop does not undo it later.
    registry.promote("race", str(slow.version), force=True, reason="drill")
    final, _ = registry._settle_champion(client, "race", "latency", 0.1)
    assert str(final.version) == str(slow.version) == champion(client, "race")
    # A version that already settled as challenger is not revived by a later settle.
    loser = client.create_model_version("race", "file:///nowhere/c", tags={
        **figures, "idap.contender_at": f"{time.time():.3f}", "idap.latency_ms_b1": "0.1", "idap.promotion": "challenger"})
    final, _ = registry._settle_champion(client, "race", "latency", 0.1)
    assert str(final.version) == str(slow.version) != str(loser.version)


RACE_SCRIPT = """
    import json, sys, time
    from pathlib import Path
    from components.services.registry import register_and_promote
    args = json.loads(sys.argv[1])
    Path(args.pop("ready")).touch()
    go = Path(args.pop("go"))
    while not go.exists():
        time.sleep(0.01)
    print(json.dumps(register_and_promote(**args)))
"""


def race_two_registrations(tmp_path, bundles, digits, name: str) -> dict:
    """Register a slower ("worse") and a faster ("good") model from two processes released at the same instant."""
    go = tmp_path / "go"
    procs = []
    for model, latency in (("worse", 0.8), ("good", 0.5)):
        args = {"parent_run_id": None, "model_dir": str(bundles[model]), "dense_dir": str(bundles["dense"]),
                "report": make_report(latency=latency), "recipe": RECIPE.to_dict(), "dataset": digits.describe(),
                "registered_name": name, "base_model": "dense", "ready": str(tmp_path / model), "go": str(go)}
        procs.append(subprocess.Popen([sys.executable, "-c", textwrap.dedent(RACE_SCRIPT), json.dumps(args)], cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=subprocess_env()))
    deadline = time.monotonic() + 120
    while not all((tmp_path / m).exists() for m in ("worse", "good")) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()
    results = {}
    for proc, model in zip(procs, ("worse", "good"), strict=True):
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"{model}: {err[-4000:]}"
        results[model] = json.loads(out.strip().splitlines()[-1])
    return results


# --- what the pages show ------------------------------------------------------------------------------------


def test_step_runs_read_in_pipeline_order_and_report_files_are_logged_once(workdir, client, tmp_path):
    parent = tracking.start_pipeline_run("order")
    for step in ("register", "prepare_data", "evaluate"):  # any start order: the names carry the position
        with tracking.step_run(parent, step) as t:
            if step == "evaluate":
                report = make_report()
                write_report(report, tmp_path / "r")
                t.log_report(report, tmp_path / "r")
            if step == "register":
                t.log_report(make_report(), files=False)
                register_run = t.run_id
    children = client.search_runs([client.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'",
                                  order_by=["attributes.run_name ASC"])
    assert [r.info.run_name for r in children] == ["01 prepare_data", "07 evaluate", "08 register"]
    assert [r.data.tags["idap.step_index"] for r in children] == ["1", "7", "8"]
    assert client.list_artifacts(register_run) == []  # metrics only: the files live in the evaluate run
    assert client.get_run(register_run).data.metrics["macs_reduction"] == 2.0
    with tracking.step_run(None, "compress") as t:  # a top-level run keeps its plain name
        pass
    assert client.get_run(t.run_id).info.run_name == "compress"


def test_pipeline_summary_on_the_parent_run(workdir, client, digits):
    parent = tracking.start_pipeline_run("summary")
    recipe = Recipe(max_accuracy_drop=1.0, target_macs_reduction=4.0, filter=FilterStageConfig(steps=3))
    steps = [StepRecord("dense", 0, "dense", 20_000, 100_000, 95.0).to_json(),
             *[StepRecord("filter", i, "prune", 15_000, 70_000, 94.8).to_json() for i in range(3)]]
    report = build_report(dense=make_report()["dense"], compressed=make_report()["compressed"], steps=steps,
                          recipe=recipe.to_dict(), dataset=digits.describe(), model_name="cnn_small")
    registration = {"name": NAME, "version": "3", "decision": "challenger", "reason": "stays challenger: slower"}
    tracking.log_pipeline_summary(parent, report=report, recipe=recipe, dataset=digits.describe(),
                                  registration=registration, base_model="runs/dense")
    run = client.get_run(parent)
    assert run.data.metrics["compressed_test_acc"] == 93.9 and run.data.metrics["macs_reduction"] == 2.0
    assert run.data.metrics["target_met"] == 0.0
    assert run.data.params["recipe.max_accuracy_drop"] == "1.0" and run.data.params["recipe.filter.steps"] == "3"
    assert run.data.params["model"] == "cnn_small" and run.data.params["dataset"] == "digits"
    assert run.data.params["base_model"] == "runs/dense"
    assert run.data.tags["idap.registered_version"] == "3" and run.data.tags["idap.promotion"] == "challenger"
    assert run.data.tags["idap.target_met"] == "false"
    assert "4x fewer MACs (reached 2.00x)" in run.data.tags["idap.target_missed"]
    assert "the schedule" in run.data.tags["idap.stopped_by"]
    note = run.data.tags["mlflow.note.content"]
    assert "**cnn_small** on **digits**" in note and "Target not reached" in note and "version 3" in note
    assert run.inputs.dataset_inputs[0].dataset.name == "digits"
    assert client.list_artifacts(parent) == []  # no report files on the parent: they are in the evaluate run


def test_version_description_says_what_and_why(workdir, client, bundles, digits):
    first = register(bundles, digits, "good", latency=0.5)
    second = register(bundles, digits, "worse", latency=0.8)
    text = client.get_model_version(NAME, first["version"]).description
    assert text.startswith("IDAP++ compression of **cnn_small** on **digits**, from base")
    assert "Decision: **champion** — there is no champion yet" in text
    assert "| MACs | 100,000 | 50,000 | 2.00x fewer |" in text and "| latency b1, PyTorch | 1.000 ms | 0.500 ms" in text
    assert RECIPE.digest() in text
    other = client.get_model_version(NAME, second["version"]).description
    assert "Decision: **challenger** — stays challenger: not lower" in other


def test_a_bundle_that_normalises_inside_registers(workdir, client, bundles, digits, tmp_path):
    """The served model takes raw pixels when the bundle records a normalisation: the parity check before
    registering feeds it raw pixels too (the probe, un-normalised)."""
    torch.manual_seed(7)
    spec = {"mean": [3.0], "std": [2.5], "scale": 1.0}
    path = save_bundle(create_model("cnn_small", 10, 1, 8), tmp_path / "normalised", input_shape=(1, 8, 8),
                       input_spec=spec)
    result = registry.register_and_promote(
        parent_run_id=None, model_dir=path, dense_dir=bundles["dense"], report=make_report(), recipe=RECIPE,
        dataset=digits.describe(), registered_name="normalised", base_model=str(bundles["dense"]))
    assert result["created"] and result["decision"] == "champion"
    served = mlflow.pyfunc.load_model("models:/normalised@champion")
    probe = load_file(str(path / "parity.safetensors"))
    raw = probe["input"] * 2.5 + 3.0
    assert np.allclose(served.predict(raw), probe["output"], atol=1e-4)
