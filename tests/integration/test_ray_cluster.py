"""A search on a RayCluster-shaped local cluster: ``ray start --head`` on 127.0.0.1 plus one worker node (one
CPU each, as the KubeRay head and a worker pod run them), a moto S3 server for the exchange, MLflow in sqlite.

* ``idap tune --address`` drives the trials from this process, with Tune's storage on S3;
* the tune pipeline's search step (``search_compression``) with ``ray_address=http://...:<dashboard>``
  submits the whole search as a Ray job (components/_ray_job) and reads the results back from S3;
* a failed job, a job past its timeout and a dead address fail with clear errors.

The cluster's processes get the S3 credentials (as the pods get them from their Secret) but neither the
MLflow URI nor the S3 endpoint: a job finds them only through the runtime environment it is submitted with.
Every Ray process is stopped by its process group / session at the end, whatever happened (never
``ray stop``, which would end every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.integration.services import MOTO_CREDENTIALS, TELEMETRY_OFF, free_port, use_s3

TINY = {"calibration_size": 128, "validation_size": 256, "eval_batch_size": 256, "device": "cpu",
        "max_accuracy_drop": 30.0, "filter": {"steps": 2, "p0": 0.05},
        "recovery": {"step_budget": 3, "final_budget": 3, "batch_size": 64}}
SPACE = {"objective": "constrained", "num_samples": 2,
         "space": {"filter.p0": {"loguniform": [0.02, 0.3]}, "filter.alpha": {"uniform": [0.5, 3.0]}}}
SECRET = "cluster-s3cr3t-never-shown"  # moto takes any key: a distinctive one shows it never reaches job info
# What the cluster's processes do not inherit from the test: a job must get these from its runtime env.
NOT_ON_THE_CLUSTER = ("MLFLOW_TRACKING_URI", "IDAP_WORKDIR", "IDAP_EXPERIMENT", "IDAP_ARTIFACT_ROOT", "IDAP_BUCKET",
                      "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL", "RAY_ADDRESS")
RAY = Path(sys.executable).parent / "ray"


@dataclass
class Cluster:
    gcs: str  # host:port: the GCS (a driver on a node of the cluster)
    client: str  # ray://host:port: the Ray Client, what a port-forward reaches (idap tune --address)
    dashboard: str  # http://host:port: the Jobs API (idap tune --submit, the pipeline's search step)
    temp_dir: Path
    log_dir: Path
    processes: list = field(default_factory=list)

    def node_ids(self) -> set[str]:
        return {n["node_id"] for n in _nodes(self.dashboard) if n.get("state") == "ALIVE"}

    def stop(self) -> None:
        for process in reversed(self.processes):  # worker first, then the head
            _stop_session(process)


def _nodes(dashboard: str) -> list[dict]:
    with urllib.request.urlopen(f"{dashboard}/api/v0/nodes?limit=100", timeout=5) as response:
        return json.loads(response.read())["data"]["result"]["result"]


def _stop_session(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the session ``ray start --block`` leads: the raylet, GCS, dashboard and every
    worker it spawned (found by session id, so none outlives the test and no other Ray is touched)."""
    def members() -> list[int]:
        out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
        return [int(p) for p, s in (line.split() for line in out.splitlines()) if int(s) == process.pid]

    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        pids = members()
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while members() and time.monotonic() < deadline:
            time.sleep(0.3)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


def _ports(*names: str) -> list[str]:
    return [f"--{name}={free_port()}" for name in names]


def _raylet_tail(temp_dir: Path) -> str:
    """The raylets' fatal lines (a failed check names its cause) and the end of each log."""
    out = []
    for path in sorted(temp_dir.glob("session_latest/logs/raylet*.out")):
        text = path.read_text(errors="replace")
        fatal = [line for line in text.splitlines() if " C " in line or "Check failed" in line][:3]
        out.append(f"{path.name}: {' | '.join(fatal)} ...{text[-800:]}")
    return "\n".join(out)


def _client_server_logs(temp_dir: Path) -> str:
    """The head's Ray Client proxy and per-connection server logs (why a ray:// connection failed)."""
    out = []
    for path in sorted(temp_dir.glob("session_latest/logs/ray_client_server*")):
        text = path.read_text(errors="replace")
        if text.strip():
            out.append(f"{path.name}: ...{text[-1500:]}")
    return "\n".join(out)


def start_cluster(log_dir: Path, env: dict, timeout: float = 300) -> Cluster:
    """Head (1 CPU, dashboard / Jobs API) + one worker node (1 CPU), every port free and on 127.0.0.1."""
    gcs_port, dash_port, client_port = free_port(), free_port(), free_port()
    temp_dir = Path(tempfile.mkdtemp(prefix="idap-rc-"))  # short: Ray's socket paths must stay < 107 chars
    cluster = Cluster(f"127.0.0.1:{gcs_port}", f"ray://127.0.0.1:{client_port}", f"http://127.0.0.1:{dash_port}",
                      temp_dir, log_dir)

    def node() -> list[str]:  # each node its own ports
        return ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats",
                *_ports("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
                        "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port"),
                "--object-store-memory=200000000"]

    head = [str(RAY), "start", "--head", f"--port={gcs_port}", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash_port}", "--include-dashboard=true", f"--temp-dir={temp_dir}",
            f"--ray-client-server-port={client_port}", *node()]
    log_dir.mkdir(parents=True, exist_ok=True)

    def launch(name: str, cmd: list[str]) -> subprocess.Popen:
        with open(log_dir / f"ray-{name}.log", "ab") as fh:
            process = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                       start_new_session=True)
        cluster.processes.append(process)
        return process

    def up(process: subprocess.Popen, name: str, nodes: int) -> bool:
        """True once ``nodes`` nodes are alive, False when ``ray start`` exited first."""
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            with contextlib.suppress(Exception):
                if len(cluster.node_ids()) >= nodes:
                    return True
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray {name} did not come up within {timeout:.0f} s:\n"
                                   f"{(log_dir / f'ray-{name}.log').read_text()[-3000:]}\n{_raylet_tail(temp_dir)}")
            time.sleep(0.5)
        return False

    try:
        if not up(launch("head", head), "head", 1):
            raise RuntimeError(f"ray start --head exited:\n{(log_dir / 'ray-head.log').read_text()[-3000:]}")
        for _attempt in range(3):  # on a loaded machine a worker's raylet may die starting: a new one, new ports
            worker = launch("worker", [str(RAY), "start", f"--address={cluster.gcs}", *node()])
            if up(worker, "worker", 2):
                break
            _stop_session(worker)
        else:
            raise RuntimeError(f"the Ray worker exited 3 times:\n{(log_dir / 'ray-worker.log').read_text()[-3000:]}"
                               f"\n{_raylet_tail(temp_dir)}")
    except BaseException:
        cluster.stop()
        raise
    return cluster


# ---- fixtures -------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def running_cluster(moto_s3, tmp_path_factory):
    """The cluster for the package (tests/integration/conftest.py's ``cluster``: one start for this module's
    tests and test_ray_train_cluster.py's)."""
    root = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k not in NOT_ON_THE_CLUSTER}
    env.update({**TELEMETRY_OFF, **MOTO_CREDENTIALS, "AWS_SECRET_ACCESS_KEY": SECRET, "RAY_AUTH_MODE": "disabled",
                "OMP_NUM_THREADS": "1", "PATH": f"{root}:{os.environ.get('PATH', '')}",
                # a loaded 2-core machine: a node may take longer than Ray's default 30 s to register, and
                # the GCS longer than its default RPC deadlines to answer
                "RAY_raylet_start_wait_time_s": "180", "RAY_gcs_server_request_timeout_seconds": "180",
                "RAY_gcs_rpc_server_reconnect_timeout_s": "180"})
    started = start_cluster(tmp_path_factory.mktemp("ray-cluster-logs"), env)
    try:
        yield started
    finally:
        started.stop()
        import shutil

        shutil.rmtree(started.temp_dir, ignore_errors=True)


@pytest.fixture
def edge_env(moto_s3, tmp_path, monkeypatch):
    """This side (a pipeline step, a laptop): own work dir and sqlite MLflow, S3 endpoint, bucket, credentials."""
    use_s3(monkeypatch, moto_s3.service, AWS_SECRET_ACCESS_KEY=SECRET, IDAP_BUCKET=moto_s3.bucket,
           IDAP_WORKDIR=str(tmp_path / "work"), IDAP_EXPERIMENT="ray-cluster-tests",
           MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", RAY_AUTH_MODE="disabled", **TELEMETRY_OFF)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    from idap.bundle import save_bundle
    from idap.cli import train_dense
    from idap.data import load_dataset

    data = load_dataset("digits", seed=0, calibration_size=128, validation_size=256)
    dense, _ = train_dense("cnn_small", data, epochs=6, seed=0, device="cpu", progress=False)
    root = tmp_path_factory.mktemp("cluster-dense")
    return save_bundle(dense, root / "dense", input_shape=(data.in_channels, data.image_size, data.image_size))


def _trial_runs(tracking_uri: str, parent_run_id: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`idap.kind` = 'trial'")


# ---- a dead address: no cluster needed ------------------------------------------------------------------------
def test_a_dead_address_fails_in_seconds_naming_it(monkeypatch):
    from components.services import ray_connect, ray_job
    from components.services.search_space import SearchSpace
    from idap.prune.config import Recipe

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    port = free_port()  # nothing listens there
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        t0 = time.monotonic()
        with pytest.raises(ray_connect.SearchError, match=f"cannot reach the Ray cluster at '{address}'.*port-forward"):
            ray_connect.start_ray(address)
        assert time.monotonic() - t0 < 5
    t0 = time.monotonic()
    with pytest.raises(ray_connect.SearchError, match=f"127.0.0.1:{port}.*refused"):
        ray_job.submit_search(f"http://127.0.0.1:{port}", data="unused", dense="unused", base=Recipe.from_dict(TINY),
                               space=SearchSpace.from_dict(SPACE), out_dir="unused")
    assert time.monotonic() - t0 < 5
    with pytest.raises(ray_connect.SearchError, match="dashboard, http://host:8265"):
        ray_job.dashboard_url(f"127.0.0.1:{port}")
    with pytest.raises(ray_connect.SearchError, match="unknown scheme 'grpc'"):
        ray_connect.probe("grpc://127.0.0.1:1")


def test_a_client_server_that_fails_to_start_is_retried_and_nothing_else_is(monkeypatch):
    """Fault injection (the head's proxy cannot be made to fail on demand): ``ray.init`` answers as the Ray
    Client's proxy does when the server process it spawned for this connection died. start_ray tries a new
    connection (at most CLIENT_ATTEMPTS in all, then a clear error); a refused init is never retried."""
    import ray

    from components.services import ray_connect

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_connect, "probe", lambda address, timeout=None: ("127.0.0.1", 1))
    monkeypatch.setattr(ray_connect, "CLIENT_RETRY_PAUSE_S", 0.0)
    proxy_error = ConnectionAbortedError("Initialization failure from server: RuntimeError: Starting Ray client "
                                         "server failed. See ray_client_server_23000.err for detailed logs.")
    calls = []

    def init(fails: int, error: Exception):
        def fake(**kwargs):
            calls.append(kwargs["address"])
            if len(calls) <= fails:
                raise error
        return fake

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(ray, "init", init(2, proxy_error))
    assert ray_connect.start_ray("ray://127.0.0.1:1") is True and calls == ["ray://127.0.0.1:1"] * 3
    calls.clear()
    monkeypatch.setattr(ray, "init", init(9, proxy_error))
    with pytest.raises(ray_connect.SearchError, match=r"client server failed.*after 3 attempts.*ray_client_server_"):
        ray_connect.start_ray("ray://127.0.0.1:1")
    assert len(calls) == ray_connect.CLIENT_ATTEMPTS
    calls.clear()
    monkeypatch.setattr(ray, "init", init(9, ConnectionError("authentication failed")))
    with pytest.raises(ray_connect.SearchError, match="authentication failed") as raised:
        ray_connect.start_ray("ray://127.0.0.1:1")
    assert len(calls) == 1 and "attempts" not in str(raised.value)


# ---- on the cluster -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_idap_tune_address_runs_the_trials_on_the_cluster(cluster, edge_env, dense_dir, moto_s3, capsys):
    """`idap tune --address ray://...` (the Ray Client, as through a port-forward) with Tune's storage on S3: the
    trials run on the cluster's nodes, every trial a nested MLflow run in this side's store, the candidates'
    checkpoints read back from S3."""
    from pipelines.cli import main

    (edge_env / "space.yaml").write_text(yaml.safe_dump(SPACE))
    (edge_env / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    exp = edge_env / "address-search"
    code = main(["tune", "--dataset", "digits", "--model-dir", str(dense_dir), "--recipe", str(edge_env / "tiny.yaml"),
                 "--search-space", str(edge_env / "space.yaml"), "--no-latency", "--max-concurrent", "2",
                 "--address", cluster.client, "--storage", f"s3://{moto_s3.bucket}/tune-address",
                 "--experiment-dir", str(exp), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, f"{captured.err[-3000:]}\n{_client_server_logs(cluster.temp_dir)}"
    printed = json.loads(captured.out)
    assert printed["trials"] == {"complete": 2, "stopped": 0, "failed": 0}
    trials = json.loads((exp / "results" / "pareto.json").read_text())["trials"]
    nodes = {t["node_id"] for t in trials}
    assert nodes and nodes <= cluster.node_ids(), (nodes, cluster.node_ids())
    print(f"--address: trials ran on {len(nodes)} of the cluster's 2 nodes")
    assert all(t["test_acc"] is not None for t in trials if t["on_front"])  # checkpoints read back from S3
    runs = _trial_runs(os.environ["MLFLOW_TRACKING_URI"], printed["mlflow_run_id"])
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}


@pytest.mark.slow
def test_the_pipeline_search_step_submits_a_ray_job_and_reads_its_results_back(cluster, edge_env, moto_s3):
    """search_compression with ray_address=http://...: the search runs as a Ray job; its results come back
    through S3; the trials log into the pipeline's MLflow run through the job's runtime environment."""
    from kfp import dsl
    from ray.job_submission import JobStatus, JobSubmissionClient

    from components.prepare_data import prepare_data
    from components.search_compression import search_compression
    from components.services import storage
    from components.train_baseline import train_baseline

    def artifact(cls, name):
        return cls(name=name, uri=str(edge_env / "artifacts" / name))

    data, dense, baseline = artifact(dsl.Dataset, "data"), artifact(dsl.Model, "dense"), artifact(dsl.Metrics, "m")
    prepared = prepare_data.python_func(data=data, dataset="digits", data_root="", recipe_json=json.dumps(TINY),
                                        seed=-1, max_accuracy_drop=-1.0, target_macs_reduction=-1.0,
                                        target_params_reduction=-1.0, train_limit=0, test_limit=0, run_name="cluster")
    common = {"recipe_json": prepared.recipe_json, "parent_run_id": prepared.parent_run_id}
    train_baseline.python_func(data=data, model_name="cnn_small", epochs=6.0, base_model_uri="", dense=dense,
                               metrics=baseline, **common)
    report, pareto, best = artifact(dsl.Markdown, "search.md"), artifact(dsl.Artifact, "pareto.json"), artifact(
        dsl.Artifact, "best-recipe.yaml")
    t0 = time.monotonic()
    out = search_compression.python_func(
        data=data, dense=dense, search_space=json.dumps(SPACE), objective="", reduction="", num_samples=0,
        cpus_per_trial=1, ray_address=cluster.dashboard, seed=0, measure_latency=False, report=report,
        pareto=pareto, best_recipe=best, job_timeout_s=600, **common)
    print(f"search step through a Ray job: {time.monotonic() - t0:.0f} s")
    doc = json.loads(Path(pareto.path).read_text())
    assert doc["summary"]["trials"] == {"complete": 2, "stopped": 0, "failed": 0}
    nodes = {t["node_id"] for t in doc["trials"]}
    assert nodes and nodes <= cluster.node_ids()
    print(f"job: trials ran on {len(nodes)} of the cluster's 2 nodes")
    winner = json.loads(out.winner)
    assert winner["trial_id"] == doc["winner"] and json.loads(out.recipe_json)["filter"]["steps"] == 2
    assert "pareto.png" in Path(report.path).read_text() or "Pareto" in Path(report.path).read_text()
    runs = _trial_runs(os.environ["MLFLOW_TRACKING_URI"], prepared.parent_run_id)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}

    client = JobSubmissionClient(cluster.dashboard)
    [job] = [j for j in client.list_jobs() if (j.metadata or {}).get("idap.search_run_id") == prepared.parent_run_id]
    assert job.status == JobStatus.SUCCEEDED
    carried = job.runtime_env["env_vars"]
    assert carried["MLFLOW_TRACKING_URI"] == os.environ["MLFLOW_TRACKING_URI"]
    assert carried["AWS_ENDPOINT_URL"] == moto_s3.endpoint and carried["IDAP_BUCKET"] == moto_s3.bucket
    assert not {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"} & set(carried)
    assert SECRET not in json.dumps(job.dict(), default=str) + client.get_job_logs(job.submission_id)
    prefix = job.metadata["idap.exchange"]
    assert storage.download(f"{prefix}/done.json", edge_env / "done.json").is_file()


@pytest.mark.slow
def test_a_failed_search_job_names_the_job_and_writes_nothing(cluster, edge_env, dense_dir, monkeypatch):
    """The job's MLflow URI points where the cluster cannot write: the job FAILS; the error names the job id
    and carries its last log lines; no result directory appears."""
    from components.services import ray_connect, ray_job
    from components.services.search_space import SearchSpace
    from idap.data import load_dataset, save_splits
    from idap.prune.config import Recipe

    save_splits(load_dataset("digits", seed=0, calibration_size=128, validation_size=256), edge_env / "data")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////proc/idap-no-such-dir/mlflow.db")
    out_dir = edge_env / "failed-results"
    with pytest.raises(ray_connect.SearchError) as caught:
        ray_job.submit_search(cluster.dashboard, data=edge_env / "data", dense=dense_dir,
                               base=Recipe.from_dict(TINY), space=SearchSpace.from_dict(SPACE), out_dir=out_dir,
                               timeout_s=300, echo=None)
    message = str(caught.value)
    assert "Ray job idap-search-" in message and "FAILED" in message and "last log lines" in message
    assert "Traceback" in message or "Error" in message.split("last log lines")[1]
    assert not out_dir.exists()


@pytest.mark.slow
def test_a_job_past_its_timeout_is_stopped(cluster):
    from ray.job_submission import JobStatus, JobSubmissionClient

    from components.services import ray_connect, ray_job

    client = JobSubmissionClient(cluster.dashboard)
    job_id = client.submit_job(entrypoint="python -c \"import time; print('still going', flush=True); "
                               "time.sleep(300)\"")
    with pytest.raises(ray_connect.SearchError, match=f"Ray job {job_id} did not finish within 4 s"):
        try:
            ray_job.wait_for_job(client, job_id, timeout_s=4, poll_s=0.5)
        except ray_connect.SearchError:
            ray_job._stop(client, job_id)
            raise
    deadline = time.monotonic() + 30
    while client.get_job_status(job_id) != JobStatus.STOPPED and time.monotonic() < deadline:
        time.sleep(0.5)
    assert client.get_job_status(job_id) == JobStatus.STOPPED
