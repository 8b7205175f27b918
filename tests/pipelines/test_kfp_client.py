"""`idap pipeline submit` / `schedule` against a fake Kubeflow Pipelines API, and cron validation.

No Kubeflow cluster runs here (no Kubernetes on these machines), so a small HTTP server on 127.0.0.1
stands in for it: it implements the few v2beta1 REST endpoints ``kfp.Client`` calls for these commands
(healthz, list / create experiment, create run, create recurring run), records every request, and
answers like the real API. The tests check what the cluster would receive.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from pipelines.cli import main
from pipelines.kfp_client import CronError, normalize_cron

API = "/apis/v2beta1"
TOKEN = "s3cr3t-t0ken-value"


class FakeKfp(BaseHTTPRequestHandler):
    requests: list  # set per server
    experiments: dict

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        url = urlsplit(self.path)
        entry = {"method": self.command, "path": url.path, "query": parse_qs(url.query), "body": body,
                 "authorization": self.headers.get("Authorization")}
        self.server.requests.append(entry)
        return entry

    def do_GET(self):
        req = self._record()
        if req["path"] == f"{API}/healthz":
            return self._reply(200, {"multi_user": False})
        if req["path"] == f"{API}/experiments":
            wanted = json.loads(req["query"]["filter"][0])["predicates"][0]["stringValue"]
            found = [e for e in self.server.experiments.values() if e["display_name"] == wanted]
            return self._reply(200, {"experiments": found, "total_size": len(found)} if found else {})
        return self._reply(404, {"error": f"no route {req['path']}"})

    def do_POST(self):
        req = self._record()
        body = req["body"]
        if req["path"] == f"{API}/experiments":
            exp = {**body, "experiment_id": f"exp-{len(self.server.experiments) + 1}"}
            self.server.experiments[exp["experiment_id"]] = exp
            return self._reply(200, exp)
        if req["path"] == f"{API}/runs":
            return self._reply(200, {**body, "run_id": "run-42", "state": "PENDING"})
        if req["path"] == f"{API}/recurringruns":
            return self._reply(200, {**body, "recurring_run_id": "rr-7", "status": "ENABLED"})
        return self._reply(404, {"error": f"no route {req['path']}"})


@pytest.fixture
def kfp_api(monkeypatch, tmp_path):
    """The fake API on a free port in a thread, stopped after the test; $KFP_TOKEN set, no kfp context file."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKfp)
    server.requests, server.experiments = [], {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    monkeypatch.setattr("kfp.client.client.Client._LOCAL_KFP_CONTEXT", str(tmp_path / "no-context.json"))
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _posts(server, path):
    return [r for r in server.requests if r["method"] == "POST" and r["path"] == f"{API}/{path}"]


def test_submit_creates_a_run_with_the_compiled_pipeline_and_parameters(kfp_api, capsys, tmp_path):
    server, host = kfp_api
    recipe = tmp_path / "r.yaml"
    recipe.write_text("max_accuracy_drop: 0.5\nfilter: {steps: 4}\n")
    code = main(["pipeline", "submit", "--host", host, "--experiment", "nightly", "--param", "dataset=digits",
                 "--param", "train_epochs=2", "--param", "seed=3", "--recipe", str(recipe), "--run-name", "r1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert result["run_id"] == "run-42" and result["url"] == f"{host}/#/runs/details/run-42"
    assert TOKEN not in out + err
    assert all(r["authorization"] == f"Bearer {TOKEN}" for r in server.requests)
    [experiment] = _posts(server, "experiments")
    assert experiment["body"]["display_name"] == "nightly"
    [run] = _posts(server, "runs")
    body = run["body"]
    assert body["display_name"] == "r1" and body["experiment_id"] == "exp-1"
    # with a Kubernetes platform spec the client sends both: {"pipeline_spec": ..., "platform_spec": ...}
    assert "kubernetes" in body["pipeline_spec"]["platform_spec"]["platforms"]
    spec = body["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "idap-compress"
    assert "register-model" in spec["root"]["dag"]["tasks"]
    params = body["runtime_config"]["parameters"]
    assert params["dataset"] == "digits" and params["train_epochs"] == 2.0 and params["seed"] == 3
    assert json.loads(params["recipe_json"])["filter"]["steps"] == 4


def test_schedule_creates_a_recurring_run_with_6_field_cron(kfp_api, capsys):
    server, host = kfp_api
    code = main(["pipeline", "schedule", "compress", "--host", host, "--cron", "30 2 * * MON-FRI",
                 "--max-concurrency", "2", "--name", "weekday-compress", "--param", "registered_name=cnn-fashion"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert result["recurring_run_id"] == "rr-7" and result["cron"] == "0 30 2 * * MON-FRI"
    assert TOKEN not in out + err
    [job] = _posts(server, "recurringruns")
    body = job["body"]
    assert body["trigger"]["cron_schedule"]["cron"] == "0 30 2 * * MON-FRI"
    assert int(body["max_concurrency"]) == 2
    assert body["display_name"] == "weekday-compress" and body["mode"] == "ENABLE" and body["no_catchup"] is True
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "idap-compress"
    assert body["runtime_config"]["parameters"] == {"registered_name": "cnn-fashion"}


def test_existing_experiment_is_reused(kfp_api, capsys):
    server, host = kfp_api
    server.experiments["exp-9"] = {"experiment_id": "exp-9", "display_name": "idap"}
    assert main(["pipeline", "submit", "--host", host]) == 0
    capsys.readouterr()
    assert not _posts(server, "experiments")
    assert _posts(server, "runs")[0]["body"]["experiment_id"] == "exp-9"


def test_garbage_cron_is_refused_before_any_request(kfp_api, capsys):
    server, host = kfp_api
    assert main(["pipeline", "schedule", "--host", host, "--cron", "every day at noon"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: CronError:") and "expected 5 fields" in err and len(err.strip().splitlines()) == 1
    assert server.requests == []


def test_unreachable_api_is_one_clear_line(capsys):
    assert main(["pipeline", "submit", "--host", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: KfpError: cannot reach the Kubeflow Pipelines API at http://127.0.0.1:9")
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("given, expected", [
    ("*/15 * * * *", "0 */15 * * * *"),
    ("0 0 3 * * *", "0 0 3 * * *"),
    ("0 0 9 ? * 2-6", "0 0 9 ? * 2-6"),
    ("  5  4 1,15 JAN-jun sun ", "0 5 4 1,15 JAN-jun sun"),
    ("@daily", "@daily"),
    ("@every 1h30m", "@every 1h30m"),
])
def test_cron_accepted(given, expected):
    assert normalize_cron(given) == expected


@pytest.mark.parametrize("bad, match", [
    ("", "0 fields"),
    ("* * *", "3 fields"),
    ("0 0 0 0 0 0 0", "7 fields"),
    ("61 * * * * *", "second value 61 is out of range 0-59"),
    ("0 24 * * *", "hour value 24 is out of range 0-23"),
    ("0 0 0 * *", "day-of-month value 0 is out of range 1-31"),
    ("* * * FOO *", "month value 'FOO' is not a number"),
    ("*/0 * * * *", "step '0' must be a positive integer"),
    ("0 10-2 * * *", "range '10-2' runs backwards"),
    ("? * * * *", "minute value '\\?'"),
    ("@sometimes", "fields"),
])
def test_cron_refused_with_the_field_named(bad, match):
    with pytest.raises(CronError, match=match):
        normalize_cron(bad)


def test_runs_use_the_service_account_the_user_names(kfp_api, capsys):
    server, host = kfp_api
    assert main(["pipeline", "submit", "--host", host, "--service-account", "idap-pipeline-runner"]) == 0
    assert main(["pipeline", "schedule", "--host", host, "--cron", "0 3 * * *",
                 "--service-account", "idap-pipeline-runner"]) == 0
    capsys.readouterr()
    [run] = _posts(server, "runs")
    [job] = _posts(server, "recurringruns")
    assert run["body"]["service_account"] == "idap-pipeline-runner"
    assert job["body"]["service_account"] == "idap-pipeline-runner"
    assert main(["pipeline", "submit", "--host", host]) == 0  # by default the cluster decides
    assert not _posts(server, "runs")[-1]["body"].get("service_account")
