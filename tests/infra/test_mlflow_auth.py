"""The MLflow Deployment as rendered, run for real on 127.0.0.1: the init container's script writes the auth
config, the server starts with the manifest's arguments (sqlite instead of PostgreSQL, a local directory
instead of S3), /health answers without credentials, the API only with them, and a client that has the
pipeline steps' environment (MLFLOW_TRACKING_USERNAME / _PASSWORD) can track."""

import base64
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.infra.test_manifests import one, render

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ADMIN, PASSWORD = "idap-admin", "s3cret-with-%-sign"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, *, host: str, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers={"Host": host})
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except urllib.error.URLError:
        return 0  # not listening (yet)


def _expand(text: str, env: dict) -> str:
    return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], text)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow-auth")
    objects = render("overlays/local")
    pod = one(objects, "Deployment", "mlflow")["spec"]["template"]["spec"]
    [init], [container] = pod["initContainers"], pod["containers"]
    config = one(objects, "ConfigMap", "idap-mlflow")["data"]
    base_env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "HOME": str(tmp)}
    ini = tmp / "basic_auth.ini"
    # the init container, as written in the manifest (its $(VAR) URI replaced by a sqlite one)
    subprocess.run([sys.executable, *init["command"][1:]], check=True, timeout=60, capture_output=True,
                   env={**base_env, "AUTH_DATABASE_URI": f"sqlite:///{tmp / 'auth.db'}",
                        "DEFAULT_PERMISSION": config["default_permission"], "MLFLOW_AUTH_CONFIG_PATH": str(ini)})
    assert "database_uri = sqlite:///" in ini.read_text()
    port = _free_port()
    values = {"BACKEND_STORE_URI": f"sqlite:///{tmp / 'mlflow.db'}", "ALLOWED_HOSTS": config["allowed_hosts"]}
    args = [_expand(a, values) if "$(ARTIFACT_BUCKET)" not in a else str(tmp / "artifacts") for a in container["args"]]
    args[args.index("--host") + 1], args[args.index("--port") + 1] = "127.0.0.1", str(port)
    env = {**base_env, "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN,
           "MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD, "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-key",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (tmp / "server.log").open("w")
    mlflow = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen([str(mlflow), *container["command"][1:], *args], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while _get(f"{base}/health", host=f"localhost:{port}") != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up: {(tmp / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
        yield {"base": base, "port": port}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_health_is_open_and_the_api_needs_a_user(server):
    base, host = server["base"], f"localhost:{server['port']}"
    search = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _get(f"{base}/health", host=host) == 200
    assert _get(search, host=host) == 401
    assert _get(search, host=host, auth=(ADMIN, "wrong")) == 401
    assert _get(search, host=host, auth=(ADMIN, PASSWORD)) == 200
    # --allowed-hosts from the ConfigMap: a Host header outside it is refused before authentication
    assert _get(search, host="evil.example", auth=(ADMIN, PASSWORD)) == 403


def test_a_client_with_the_steps_environment_can_track(server):
    code = ("import mlflow; c = mlflow.MlflowClient(); e = c.create_experiment('auth-check'); "
            "r = c.create_run(e); c.log_metric(r.info.run_id, 'm', 1.0); print(c.get_run(r.info.run_id).data.metrics)")
    env = {**os.environ, "MLFLOW_TRACKING_URI": server["base"], "MLFLOW_TRACKING_USERNAME": ADMIN,
           "MLFLOW_TRACKING_PASSWORD": PASSWORD, "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "{'m': 1.0}" in result.stdout
    denied = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**env, "MLFLOW_TRACKING_PASSWORD": "wrong"})
    assert denied.returncode != 0 and "401" in denied.stderr
