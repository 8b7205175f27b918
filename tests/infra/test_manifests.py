"""infra/: render base and overlays, validate built-in kinds offline, and check the platform's invariants."""

import base64
import fnmatch
import importlib.util
import re
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
K8S_VERSION = "1.33.0"
RENDERS = ["base", "overlays/local", "overlays/production"]
OVERLAYS = RENDERS[1:]
CUSTOM_KINDS = {"RayCluster", "ExternalSecret"}  # CRDs: checked structurally, no schema offline
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}
PLACEHOLDERS = ("change-me", "REPLACE_ME")
CREDENTIAL_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", re.IGNORECASE)

_spec = importlib.util.spec_from_file_location("infra_render", INFRA / "render.py")
render_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_module)

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT_IMAGE = f"ghcr.io/idap/idap:{PYPROJECT['project']['version']}"


@pytest.fixture(scope="module", params=RENDERS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render_module.render(INFRA / request.param)


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def one(objects, kind, name):
    [obj] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def pod_specs(obj) -> list[dict]:
    """Every pod template inside an object, built-in workloads and RayCluster groups alike."""
    if obj["kind"] in WORKLOAD_KINDS:
        return [obj["spec"]["template"]["spec"]]
    if obj["kind"] == "RayCluster":
        groups = [obj["spec"]["headGroupSpec"], *obj["spec"]["workerGroupSpecs"]]
        return [group["template"]["spec"] for group in groups]
    return []


def containers(objects):
    return [c for obj in objects for spec in pod_specs(obj) for c in spec["containers"]]


def test_builtin_kinds_match_the_kubernetes_schema(rendered):
    _, objects = rendered
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{render_module.object_id(obj)}: {exc.message} at {list(exc.path)}")
    assert {o["kind"] for o in objects} - CUSTOM_KINDS >= {"Namespace", "Deployment", "StatefulSet", "Service"}


def test_everything_lives_in_the_idap_namespace(rendered):
    _, objects = rendered
    for obj in objects:
        expected = None if obj["kind"] == "Namespace" else "idap"
        assert obj["metadata"].get("namespace") == expected, render_module.object_id(obj)
    assert one(objects, "Namespace", "idap")


def test_workloads_have_resources_probes_and_run_as_non_root(rendered):
    _, objects = rendered
    workloads = [o for o in objects if o["kind"] in WORKLOAD_KINDS | {"RayCluster"}]
    assert len(workloads) >= 3
    for obj in workloads:
        for spec in pod_specs(obj):
            assert spec["securityContext"]["runAsNonRoot"] is True, render_module.object_id(obj)
            assert spec["securityContext"]["runAsUser"] > 0
            for container in spec["containers"]:
                where = f"{render_module.object_id(obj)} container {container['name']}"
                for bound in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(container["resources"][bound]), where
                if obj["kind"] != "Job":  # a Job runs to completion: nothing to probe
                    assert "readinessProbe" in container and "livenessProbe" in container, where
                assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
                assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], where


def test_images_are_pinned(rendered):
    _, objects = rendered
    for container in containers(objects):
        name, _, tag = container["image"].rpartition(":")
        assert name and tag and tag != "latest" and "/" not in tag, container["image"]


def test_references_resolve(rendered):
    """Every Secret / ConfigMap key and volume claim that a container uses is defined by the same render."""
    overlay, objects = rendered
    secrets = {o["metadata"]["name"]: set(o.get("data", {})) | set(o.get("stringData", {}))
               for o in by_kind(objects, "Secret")}
    for external in by_kind(objects, "ExternalSecret"):
        name = external["spec"].get("target", {}).get("name", external["metadata"]["name"])
        secrets[name] = {item["secretKey"] for item in external["spec"]["data"]}
    config_maps = {o["metadata"]["name"]: set(o["data"]) for o in by_kind(objects, "ConfigMap")}
    claims = {o["metadata"]["name"] for o in by_kind(objects, "PersistentVolumeClaim")}
    secret_refs = []
    for container in containers(objects):
        for env in container.get("env", []):
            source = env.get("valueFrom", {})
            if "secretKeyRef" in source:
                secret_refs.append(source["secretKeyRef"])
            if "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                assert ref["key"] in config_maps.get(ref["name"], set()), f"{overlay}: ConfigMap {ref}"
    for obj in objects:
        for spec in pod_specs(obj):
            for volume in spec.get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims, f"{overlay}: {volume}"
    assert secret_refs, "the platform uses credentials: some secretKeyRef is expected"
    if overlay == "base":
        return  # the base refers to Secrets that each overlay provides
    for ref in secret_refs:
        assert ref["key"] in secrets.get(ref["name"], set()), f"{overlay}: Secret {ref} is not defined"


def test_no_plaintext_credentials(rendered):
    overlay, objects = rendered
    if overlay == "base":
        assert not by_kind(objects, "Secret")
    for container in containers(objects):
        for env in container.get("env", []):
            if CREDENTIAL_NAME.search(env["name"]):
                assert "valueFrom" in env and "value" not in env, f"{env['name']} in {container['name']}"
    for secret in by_kind(objects, "Secret"):
        values = [base64.b64decode(v).decode() for v in secret.get("data", {}).values()]
        values += list(secret.get("stringData", {}).values())
        for key, value in zip(secret.get("data", secret.get("stringData")), values, strict=True):
            is_identifier = key in ("username", "database")
            assert is_identifier or any(p in value for p in PLACEHOLDERS), f"{overlay}: {key}={value!r}"


def test_secret_example_is_documentation_only():
    example = render_module.load_documents(INFRA / "base" / "secret.example.yaml")
    names = {doc["metadata"]["name"] for doc in example}
    assert names == {"idap-db-credentials", "idap-object-store-credentials"}
    assert all(v in ("mlflow", "REPLACE_ME") for doc in example for v in doc["stringData"].values())
    for path in INFRA.rglob("kustomization.yaml"):
        assert "secret.example.yaml" not in yaml.safe_load(path.read_text()).get("resources", [])


def test_names_are_backend_neutral(rendered):
    _, objects = rendered
    for obj in objects:
        assert "minio" not in obj["metadata"]["name"].lower(), render_module.object_id(obj)


def test_object_store_server_only_in_the_local_overlay():
    local = render_module.render(INFRA / "overlays/local")
    production = render_module.render(INFRA / "overlays/production")
    store = one(local, "Deployment", "object-store")
    endpoint = one(local, "ConfigMap", "idap-object-store")["data"]["endpoint_url"]
    service = one(local, "Service", "object-store")
    assert endpoint == f"http://object-store.idap.svc.cluster.local:{service['spec']['ports'][0]['port']}"
    assert store["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == 9000
    assert not [o for o in production if o["metadata"]["name"] == "object-store"]
    config = one(production, "ConfigMap", "idap-object-store")["data"]
    assert re.fullmatch(r"https://s3\.[a-z0-9-]+\.amazonaws\.com", config["endpoint_url"])
    assert config["region"] in config["endpoint_url"] and config["bucket"] == "idap-artifacts"


def test_services_select_pods(rendered):
    _, objects = rendered
    pod_labels = [o["spec"]["template"]["metadata"]["labels"] for o in objects if o["kind"] in WORKLOAD_KINDS]
    for service in by_kind(objects, "Service"):
        selector = service["spec"]["selector"].items()
        assert any(selector <= labels.items() for labels in pod_labels), service["metadata"]["name"]


def test_mlflow_server(rendered):
    _, objects = rendered
    [container] = one(objects, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    option = {flag: args[i + 1] for i, flag in enumerate(args[:-1]) if flag.startswith("--")}
    assert container["command"] == ["mlflow", "server"] and container["image"] == PROJECT_IMAGE
    assert option["--backend-store-uri"].startswith("postgresql+psycopg2://")
    assert "@idap-postgres:5432/" in option["--backend-store-uri"]
    assert one(objects, "Service", "idap-postgres")["spec"]["ports"][0]["port"] == 5432
    assert option["--artifacts-destination"].startswith("s3://") and option["--host"] == "0.0.0.0"
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
    assert env["MLFLOW_DISABLE_TELEMETRY"]["value"] == "true"
    # $(VAR) in args expands only from the container's own env
    for var in re.findall(r"\$\((\w+)\)", " ".join(args)):
        assert var in env, var
    allowed = one(objects, "ConfigMap", "idap-mlflow")["data"]["allowed_hosts"].split(",")
    assert option["--allowed-hosts"] == "$(ALLOWED_HOSTS)"
    for host in ("mlflow:5000", "mlflow.idap.svc.cluster.local:5000"):
        assert host in allowed
    for probe in ("readinessProbe", "livenessProbe"):
        [header] = container[probe]["httpGet"]["httpHeaders"]
        assert any(fnmatch.fnmatch(header["value"], pattern) for pattern in allowed), header


def test_raycluster_uses_the_project_image(rendered):
    _, objects = rendered
    [cluster] = by_kind(objects, "RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    ray_pin = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("ray["))
    assert cluster["spec"]["rayVersion"] == ray_pin.split("==")[1]
    head, workers = cluster["spec"]["headGroupSpec"], cluster["spec"]["workerGroupSpecs"]
    assert workers and all(w["groupName"] and w["minReplicas"] <= w["replicas"] <= w["maxReplicas"]
                           for w in workers)
    for group in [head, *workers]:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())  # KubeRay wants strings
        for container in group["template"]["spec"]["containers"]:
            assert container["image"] == PROJECT_IMAGE
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["DO_NOT_TRACK"] == "true"
            assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.idap.svc.cluster.local:5000"


def test_overlays_size_the_ray_workers():
    replicas = {o: by_kind(render_module.render(INFRA / o), "RayCluster")[0]["spec"]["workerGroupSpecs"][0]
                for o in OVERLAYS}
    assert replicas["overlays/local"]["replicas"] == 1
    assert replicas["overlays/production"]["replicas"] > replicas["overlays/local"]["replicas"]


def test_renderer_refuses_what_it_cannot_render_faithfully(tmp_path):
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: v}\n")
    (tmp_path / "patch.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: w}\n")
    kustomization = {"resources": ["cm.yaml"], "patches": [{"path": "patch.yaml"}]}
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    assert render_module.render(tmp_path)[0]["data"] == {"k": "w"}
    for extra in ({"images": [{"name": "x"}]}, {"patches": [{"path": "patch.yaml", "target": {"name": "zzz"}}]}):
        (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({**kustomization, **extra}))
        with pytest.raises(render_module.RenderError):
            render_module.render(tmp_path)
