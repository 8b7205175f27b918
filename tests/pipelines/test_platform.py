"""The compiled compress pipeline carries the Kubernetes platform config of every step (env from the
ConfigMaps and Secrets infra/ defines, resources, GPUs, retries), and the names it references are exactly
the names the rendered manifests define."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kfp import compiler, dsl

from pipelines._platform import (
    STEPS,
    PlatformError,
    PlatformSettings,
    _asks_for_gpus,
    configure,
    without_retries,
)

ROOT = Path(__file__).resolve().parents[2]
COMPRESS_STEPS = ["prepare-data", "train-baseline", "score-divergence", "prune-filters", "prune-layers", "finetune",
                  "evaluate", "register-model"]
GPU_STEPS = {"train-baseline", "prune-filters", "prune-layers", "finetune"}
# what components/services/settings.py, boto3 and MLflow read
STEP_ENV = {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "AWS_ENDPOINT_URL",
            "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "IDAP_BUCKET"}


def compile_compress(directory: Path, env: dict | None = None) -> tuple[dict, dict]:
    """(pipeline spec, platform spec) of the compress pipeline compiled in a fresh interpreter with ``env``
    (compile-time settings are read from the environment when the pipeline module is imported)."""
    code = ("import sys; from kfp import compiler; from pipelines.compress import compress_pipeline; "
            "compiler.Compiler().compile(compress_pipeline, sys.argv[1])")
    path = directory / "compress.yaml"
    subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, env={**os.environ, **(env or {})}, check=True,
                   capture_output=True, timeout=300)
    spec, platform = yaml.safe_load_all(path.read_text())
    return spec, platform


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return compile_compress(tmp_path_factory.mktemp("ir"))


def executor_of(spec: dict, task: str) -> str:
    return spec["root"]["dag"]["tasks"][task]["componentRef"]["name"].replace("comp-", "exec-", 1)


def kubernetes_config(spec: dict, platform: dict, task: str) -> dict:
    return platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][executor_of(spec, task)]


def env_sources(config: dict) -> dict[str, tuple[str, str, str]]:
    """``{ENV: (kind, object name, key)}`` a step's platform config injects."""
    sources = {}
    for kind, field, key_field in (("configMap", "configMapAsEnv", "configMapKey"), ("secret", "secretAsEnv", "secretKey")):
        for entry in config.get(field, []):
            name = entry[f"{kind}NameParameter"]["runtimeValue"]["constant"]
            assert entry[f"{kind}Name"] == name and entry["optional"] is False
            for pair in entry["keyToEnv"]:
                assert pair["envVar"] not in sources, f"{pair['envVar']} injected twice"
                sources[pair["envVar"]] = (kind, name, pair[key_field])
    return sources


def test_every_step_gets_the_cluster_environment(compiled):
    spec, platform = compiled
    assert sorted(spec["root"]["dag"]["tasks"]) == sorted(COMPRESS_STEPS)
    expected = {"MLFLOW_TRACKING_URI": ("configMap", "idap-mlflow", "tracking_uri"),
                "AWS_ENDPOINT_URL": ("configMap", "idap-object-store", "endpoint_url"),
                "AWS_DEFAULT_REGION": ("configMap", "idap-object-store", "region"),
                "IDAP_BUCKET": ("configMap", "idap-object-store", "bucket"),
                "AWS_ACCESS_KEY_ID": ("secret", "idap-object-store-credentials", "access_key_id"),
                "AWS_SECRET_ACCESS_KEY": ("secret", "idap-object-store-credentials", "secret_access_key"),
                "MLFLOW_TRACKING_USERNAME": ("secret", "idap-mlflow-credentials", "username"),
                "MLFLOW_TRACKING_PASSWORD": ("secret", "idap-mlflow-credentials", "password")}
    for task in COMPRESS_STEPS:
        assert env_sources(kubernetes_config(spec, platform, task)) == expected, task
    assert set(expected) == STEP_ENV


def test_resources_per_step_and_gpus_from_a_pipeline_parameter(compiled):
    spec, _ = compiled
    assert spec["root"]["inputDefinitions"]["parameters"]["gpus"]["defaultValue"] == 0
    for task in COMPRESS_STEPS:
        resources = spec["deploymentSpec"]["executors"][executor_of(spec, task)]["container"]["resources"]
        profile = STEPS[task]
        assert (resources["resourceCpuRequest"], resources["resourceCpuLimit"]) == profile.cpu, task
        assert (resources["resourceMemoryRequest"], resources["resourceMemoryLimit"]) == profile.memory, task
        assert resources["cpuRequest"] <= resources["cpuLimit"] and resources["memoryRequest"] <= resources["memoryLimit"]
        if task in GPU_STEPS:
            accelerator = resources["accelerator"]
            assert accelerator["resourceType"] == "nvidia.com/gpu"
            # the count is the run's `gpus` parameter, resolved by the KFP driver when the pod is made
            assert accelerator["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--gpus']}}"
            inputs = spec["root"]["dag"]["tasks"][task]["inputs"]["parameters"]
            assert inputs["pipelinechannel--gpus"] == {"componentInputParameter": "gpus"}
        else:
            assert "accelerator" not in resources, f"{task} stays on CPU"
    evaluate = spec["deploymentSpec"]["executors"][executor_of(spec, "evaluate")]["container"]["resources"]
    assert evaluate["resourceCpuRequest"] == evaluate["resourceCpuLimit"]  # latency on a CPU of its own


def test_retries_with_backoff_never_on_register_model(compiled):
    spec, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    for task in COMPRESS_STEPS:
        policy = tasks[task].get("retryPolicy")
        if task == "register-model":
            assert policy is None, "register-model closes the MLflow run: never retried"
            continue
        assert policy["maxRetryCount"] == 2, task
        assert policy["backoffDuration"] == "30s" and policy["backoffFactor"] == 2.0, task
        assert policy["backoffMaxDuration"] == "1800s", task
    assert all(not t.get("cachingOptions", {}).get("enableCache") for t in tasks.values())


def _rendered(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed to render infra/")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "infra" / overlay)], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.parametrize("overlay", ["overlays/local", "overlays/production"])
def test_the_pipeline_references_exactly_what_the_manifests_define(compiled, overlay):
    spec, platform = compiled
    objects = _rendered(overlay)
    defined = {("configMap", o["metadata"]["name"], key) for o in objects if o["kind"] == "ConfigMap" for key in o["data"]}
    defined |= {("secret", o["metadata"]["name"], key) for o in objects if o["kind"] == "Secret"
                for key in {**o.get("data", {}), **o.get("stringData", {})}}
    defined |= {("secret", o["spec"]["target"]["name"], item["secretKey"]) for o in objects
                if o["kind"] == "ExternalSecret" for item in o["spec"]["data"]}
    referenced = {source for task in COMPRESS_STEPS for source in env_sources(kubernetes_config(spec, platform, task)).values()}
    missing = referenced - defined
    assert not missing, f"{overlay} does not define {sorted(missing)}"
    # ... and the names are the ones infra/ gives its objects, with the defaults the settings document
    settings = PlatformSettings()
    assert {name for _, name, _ in referenced} == {*settings.config_maps(), *settings.secrets()}
    accounts = {o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount"}
    assert settings.service_account in accounts
    # the tracking URI the steps get is the MLflow Service's in-cluster name
    [mlflow_service] = [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "mlflow"]
    [tracking] = [o["data"]["tracking_uri"] for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "idap-mlflow"]
    port = mlflow_service["spec"]["ports"][0]["port"]
    assert tracking == f"http://{mlflow_service['metadata']['name']}.{mlflow_service['metadata']['namespace']}.svc.cluster.local:{port}"


def test_compile_time_settings_rename_and_place_gpu_steps(tmp_path):
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    env = {"IDAP_K8S_TRACKING_CONFIG_MAP": "team-mlflow", "IDAP_K8S_OBJECT_STORE_SECRET": "team-s3",
           "IDAP_K8S_GPU_RESOURCE": "amd.com/gpu", "IDAP_K8S_GPU_NODE_SELECTOR": json.dumps({"pool": "gpu"}),
           "IDAP_K8S_GPU_TOLERATIONS": json.dumps(tolerations), "IDAP_K8S_RETRIES": "0"}
    spec, platform = compile_compress(tmp_path, env)
    for task in COMPRESS_STEPS:
        config = kubernetes_config(spec, platform, task)
        sources = env_sources(config)
        assert sources["MLFLOW_TRACKING_URI"] == ("configMap", "team-mlflow", "tracking_uri")
        assert sources["AWS_ACCESS_KEY_ID"] == ("secret", "team-s3", "access_key_id")
        assert "retryPolicy" not in spec["root"]["dag"]["tasks"][task]
        if task in GPU_STEPS:
            assert config["nodeSelector"] == {"labels": {"pool": "gpu"}}
            assert config["tolerations"] == tolerations
            resources = spec["deploymentSpec"]["executors"][executor_of(spec, task)]["container"]["resources"]
            assert resources["accelerator"]["resourceType"] == "amd.com/gpu"
        else:
            assert "nodeSelector" not in config and "tolerations" not in config, task


@dsl.component(base_image="python:3.11-slim")
def _noop() -> str:
    return "ok"


def _pipeline_with(step: str, gpus):
    @dsl.pipeline(name="one-step")
    def one_step():
        configure(_noop(), step, gpus=gpus, settings=PlatformSettings(gpu_node_selector={"pool": "gpu"}))

    return one_step


def test_a_literal_gpu_count(tmp_path):
    for gpus, expect in ((0, None), (2, "2")):
        path = tmp_path / f"p{gpus}.yaml"
        compiler.Compiler().compile(_pipeline_with("finetune", gpus), str(path))
        spec, platform = yaml.safe_load_all(path.read_text())
        [executor] = spec["deploymentSpec"]["executors"].values()
        [config] = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
        if expect is None:
            assert "accelerator" not in executor["container"]["resources"] and "nodeSelector" not in config
        else:
            assert executor["container"]["resources"]["accelerator"]["resourceCount"] == expect
            assert config["nodeSelector"] == {"labels": {"pool": "gpu"}}
    # a CPU kind never asks for a GPU, whatever it is given
    path = tmp_path / "cpu.yaml"
    compiler.Compiler().compile(_pipeline_with("evaluate", 2), str(path))
    spec = next(yaml.safe_load_all(path.read_text()))
    [executor] = spec["deploymentSpec"]["executors"].values()
    assert "accelerator" not in executor["container"]["resources"]


@pytest.mark.parametrize(("env", "message"), [
    ({"IDAP_K8S_GPU_NODE_SELECTOR": "pool=gpu"}, "IDAP_K8S_GPU_NODE_SELECTOR is not valid JSON"),
    ({"IDAP_K8S_GPU_NODE_SELECTOR": '["pool"]'}, "must hold a JSON object"),
    ({"IDAP_K8S_GPU_NODE_SELECTOR": '{"pool": 1}'}, "gpu_node_selector must map strings to strings"),
    ({"IDAP_K8S_GPU_TOLERATIONS": '{"key": "x"}'}, "must hold a JSON list"),
    ({"IDAP_K8S_GPU_TOLERATIONS": '[{"effect": "NoSchedule"}]'}, "each GPU toleration"),
    ({"IDAP_K8S_RETRIES": "two"}, "IDAP_K8S_RETRIES must be an integer, got 'two'"),
    ({"IDAP_K8S_RETRIES": "11"}, r"retries must be an integer in \[0, 10\], got 11"),
])
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(PlatformError, match=message):
        PlatformSettings.from_env(env)


def test_defaults_and_bad_arguments():
    assert PlatformSettings.from_env({}) == PlatformSettings()
    with pytest.raises(PlatformError, match=r"unknown step kind 'train'; valid: \[.*'finetune'.*\]"):
        configure(None, "train")
    with pytest.raises(PlatformError, match="gpus must be a non-negative integer"):
        _asks_for_gpus(-1)
    assert not STEPS["register-model"].retry and not STEPS["search"].retry
    assert {k for k, p in STEPS.items() if p.gpu_capable} == GPU_STEPS | {"search"}


LOCAL_RUN = '''
import sys
from kfp import dsl, local
from pipelines._platform import configure, without_retries

@dsl.component(base_image="python:3.11-slim", install_kfp_package=False)
def attempt(path: str, fail: bool) -> str:
    with open(path, "a") as handle:
        handle.write("attempt\\n")
    if fail:
        raise RuntimeError("transient")
    return "ok"

@dsl.pipeline(name="local-platform")
def pipeline(path: str, fail: bool, gpus: int = 1) -> str:
    return configure(attempt(path=path, fail=fail), "finetune", gpus=gpus).output

local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=sys.argv[2], raise_on_error=False)
pipeline = without_retries(pipeline) if sys.argv[3] == "without" else pipeline
pipeline(path=sys.argv[1], fail=True)
'''


@pytest.mark.slow
def test_the_local_runner_ignores_the_platform_config(tmp_path):
    """Secrets that do not exist here and a GPU: locally the step runs on this machine all the same, and
    once under ``without_retries`` (kfp.local honours retry policies: measured 3 attempts and 90 s of
    backoff without it)."""
    script = tmp_path / "local_platform.py"
    script.write_text(LOCAL_RUN)
    attempts = tmp_path / "attempts.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(script), str(attempts), str(tmp_path / "root"), "without"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RuntimeError: transient" in result.stdout + result.stderr  # it ran, and failed as it should
    assert attempts.read_text().count("attempt") == 1


def test_without_retries_copies_the_pipeline(compiled):
    from pipelines.compress import compress_pipeline

    local = without_retries(compress_pipeline)
    assert all(not task.HasField("retry_policy") for task in local.pipeline_spec.root.dag.tasks.values())
    assert local.pipeline_spec.root.dag.tasks["finetune"].component_ref == \
        compress_pipeline.pipeline_spec.root.dag.tasks["finetune"].component_ref
    assert compress_pipeline.pipeline_spec.root.dag.tasks["finetune"].retry_policy.max_retry_count == 2  # untouched


def test_the_tune_pipeline_is_configured_the_same_way(tmp_path):
    """Every task of the tune pipeline gets the same environment; only register-model and the search (a new
    attempt would start the search over) go without retries."""
    code = ("import sys; from kfp import compiler; from pipelines.tune import tune_pipeline; "
            "compiler.Compiler().compile(tune_pipeline, sys.argv[1])")
    path = tmp_path / "tune.yaml"
    subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, check=True, capture_output=True, timeout=300)
    spec, platform = yaml.safe_load_all(path.read_text())
    tasks = spec["root"]["dag"]["tasks"]
    assert "search-compression" in tasks and "register-model" in tasks
    for task in tasks:
        assert set(env_sources(kubernetes_config(spec, platform, task))) == STEP_ENV, task
        resources = spec["deploymentSpec"]["executors"][executor_of(spec, task)]["container"]["resources"]
        assert {"resourceCpuLimit", "resourceMemoryLimit"} <= set(resources), task
        assert ("retryPolicy" in tasks[task]) is (task not in ("register-model", "search-compression")), task
