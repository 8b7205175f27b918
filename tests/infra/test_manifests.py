"""infra/: render base and overlays with the real kustomize (`kubectl kustomize`, what `kubectl apply -k`
applies), validate built-in kinds offline against the Kubernetes schemas of K8S_VERSION, check custom
resources structurally, and check the platform's invariants."""

import base64
import fnmatch
import os
import re
import shutil
import subprocess
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
# Custom resources: no schema for them ships with kubernetes-validate or any installed package, and the
# tests run offline, so they are checked structurally below (RayCluster: test_raycluster_*). Set
# IDAP_RAYCLUSTER_CRD to a copy of KubeRay's ray.io_rayclusters.yaml to check against its schema too.
CUSTOM_KINDS = {"RayCluster", "ExternalSecret"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}
PLACEHOLDERS = ("change-me", "REPLACE_ME")
CREDENTIAL_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", re.IGNORECASE)
IDENTIFIER_KEYS = {"username", "database", "host", "port"}  # Secret keys that are not credentials

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT_IMAGE = f"ghcr.io/idap/idap:{PYPROJECT['project']['version']}"


def kustomize(directory: Path) -> list[dict]:
    """The objects `kubectl apply -k DIRECTORY` would apply."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl (with its built-in kustomize) is needed to render infra/: install kubectl")
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, f"kubectl kustomize {directory} failed: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


_RENDERED: dict[str, list[dict]] = {}


def render(name: str) -> list[dict]:
    if name not in _RENDERED:
        _RENDERED[name] = kustomize(INFRA / name)
    return _RENDERED[name]


@pytest.fixture(scope="module", params=RENDERS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def object_id(obj) -> str:
    return f"{obj['kind']}/{obj['metadata'].get('namespace', '')}/{obj['metadata']['name']}"


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


def containers(objects, *, init=True):
    return [c for obj in objects for spec in pod_specs(obj)
            for c in spec["containers"] + (spec.get("initContainers", []) if init else [])]


def defined_keys(objects) -> tuple[dict[str, set], dict[str, set]]:
    """``({Secret: keys}, {ConfigMap: keys})`` a render defines (ExternalSecrets count as their target)."""
    secrets = {o["metadata"]["name"]: set(o.get("data", {})) | set(o.get("stringData", {}))
               for o in by_kind(objects, "Secret")}
    for external in by_kind(objects, "ExternalSecret"):
        name = external["spec"].get("target", {}).get("name", external["metadata"]["name"])
        secrets[name] = {item["secretKey"] for item in external["spec"]["data"]}
    config_maps = {o["metadata"]["name"]: set(o["data"]) for o in by_kind(objects, "ConfigMap")}
    return secrets, config_maps


def test_builtin_kinds_match_the_kubernetes_schema(rendered):
    _, objects = rendered
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{object_id(obj)}: {exc.message} at {list(exc.path)}")
    assert {o["kind"] for o in objects} - CUSTOM_KINDS >= {"Namespace", "Deployment", "StatefulSet", "Service",
                                                           "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy"}


def test_schema_validation_rejects_a_broken_object():
    """The check above can fail: a Deployment with a misspelt field is refused in strict mode."""
    deployment = one(render("base"), "Deployment", "mlflow")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_everything_lives_in_the_idap_namespace(rendered):
    _, objects = rendered
    for obj in objects:
        expected = None if obj["kind"] == "Namespace" else "idap"
        assert obj["metadata"].get("namespace") == expected, object_id(obj)
    assert one(objects, "Namespace", "idap")


def test_workloads_have_resources_probes_and_run_as_non_root(rendered):
    _, objects = rendered
    workloads = [o for o in objects if o["kind"] in WORKLOAD_KINDS | {"RayCluster"}]
    assert len(workloads) >= 3
    for obj in workloads:
        for spec in pod_specs(obj):
            assert spec["securityContext"]["runAsNonRoot"] is True, object_id(obj)
            assert spec["securityContext"]["runAsUser"] > 0
            init = {c["name"] for c in spec.get("initContainers", [])}
            for container in spec["containers"] + spec.get("initContainers", []):
                where = f"{object_id(obj)} container {container['name']}"
                for bound in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(container["resources"][bound]), where
                if obj["kind"] != "Job" and container["name"] not in init:  # run to completion: no probes
                    assert "readinessProbe" in container and "livenessProbe" in container, where
                assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
                assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], where


def test_images_are_pinned(rendered):
    _, objects = rendered
    images = [c["image"] for c in containers(objects)]
    assert images
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and "/" not in tag, image


def test_references_resolve(rendered):
    """Every Secret / ConfigMap key, volume claim and service account a pod uses is defined by the render."""
    overlay, objects = rendered
    secrets, config_maps = defined_keys(objects)
    claims = {o["metadata"]["name"] for o in by_kind(objects, "PersistentVolumeClaim")}
    secret_refs = []
    for container in containers(objects):
        names = [e["name"] for e in container.get("env", [])]
        for env in container.get("env", []):
            source = env.get("valueFrom", {})
            if "secretKeyRef" in source:
                secret_refs.append(source["secretKeyRef"])
            if "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                assert ref["key"] in config_maps.get(ref["name"], set()), f"{overlay}: ConfigMap {ref}"
            # $(VAR) expands only from variables defined earlier in the same container
            for var in re.findall(r"\$\((\w+)\)", env.get("value", "")):
                assert var in names[:names.index(env["name"])], f"{overlay}: {env['name']} uses $({var})"
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
        values = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
        values.update(secret.get("stringData", {}))
        for key, value in values.items():
            assert key in IDENTIFIER_KEYS or any(p in value for p in PLACEHOLDERS), f"{overlay}: {key}={value!r}"


def test_secret_example_is_documentation_only():
    example = [d for d in yaml.safe_load_all((INFRA / "base" / "secret.example.yaml").read_text()) if d]
    keys = {doc["metadata"]["name"]: set(doc["stringData"]) for doc in example}
    for overlay in OVERLAYS:  # the example documents exactly what each overlay provides
        assert keys == defined_keys(render(overlay))[0], overlay
    for doc in example:
        for key, value in doc["stringData"].items():
            assert key in IDENTIFIER_KEYS or value == "REPLACE_ME", (doc["metadata"]["name"], key)
    for path in INFRA.rglob("kustomization.yaml"):
        assert "secret.example.yaml" not in (yaml.safe_load(path.read_text()).get("resources") or [])


def test_names_are_backend_neutral(rendered):
    _, objects = rendered
    for obj in objects:
        assert "minio" not in obj["metadata"]["name"].lower(), object_id(obj)
        for spec in pod_specs(obj):
            for volume in spec.get("volumes", []):
                assert "minio" not in volume["name"].lower()
    secrets, config_maps = defined_keys(objects)
    assert not [k for keys in [*secrets.values(), *config_maps.values()] for k in keys if "minio" in k.lower()]


def test_object_store_server_and_bucket_job_only_in_the_local_overlay():
    local, production = render("overlays/local"), render("overlays/production")
    store = one(local, "Deployment", "object-store")
    config = one(local, "ConfigMap", "idap-object-store")["data"]
    service = one(local, "Service", "object-store")
    assert config["endpoint_url"] == f"http://object-store.idap.svc.cluster.local:{service['spec']['ports'][0]['port']}"
    assert store["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == 9000
    [job] = by_kind(local, "Job")
    [creator] = job["spec"]["template"]["spec"]["containers"]
    assert "create_bucket" in creator["command"][-1]
    env = {e["name"]: e["valueFrom"]["configMapKeyRef"] for e in creator["env"] if "configMapKeyRef" in e["valueFrom"]}
    assert env["BUCKET"] == {"name": "idap-object-store", "key": "bucket"}
    assert not [o for o in production if o["metadata"]["name"] == "object-store"] and not by_kind(production, "Job")
    config = one(production, "ConfigMap", "idap-object-store")["data"]
    assert re.fullmatch(r"https://s3\.[a-z0-9-]+\.amazonaws\.com", config["endpoint_url"])
    assert config["region"] in config["endpoint_url"] and config["bucket"] == "idap-artifacts"


def test_services_select_pods(rendered):
    _, objects = rendered
    pod_labels = [o["spec"]["template"]["metadata"]["labels"] for o in objects if o["kind"] in WORKLOAD_KINDS]
    for service in by_kind(objects, "Service"):
        selector = service["spec"]["selector"].items()
        assert any(selector <= labels.items() for labels in pod_labels), service["metadata"]["name"]


def _mlflow_container(objects):
    [container] = one(objects, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"]
    return container


def test_mlflow_server(rendered):
    _, objects = rendered
    container = _mlflow_container(objects)
    args = container["args"]
    option = {flag: args[i + 1] for i, flag in enumerate(args[:-1]) if flag.startswith("--")}
    env = {e["name"]: e for e in container["env"]}
    assert container["command"] == ["mlflow", "server"] and container["image"] == PROJECT_IMAGE
    assert option["--app-name"] == "basic-auth"
    assert option["--backend-store-uri"] == "$(BACKEND_STORE_URI)"
    assert env["BACKEND_STORE_URI"]["value"] == "postgresql+psycopg2://$(DB_USER):$(DB_PASSWORD)@$(DB_HOST):$(DB_PORT)/$(DB_NAME)"
    assert one(objects, "Service", "idap-postgres")["spec"]["ports"][0]["port"] == 5432
    assert option["--artifacts-destination"] == "s3://$(ARTIFACT_BUCKET)/mlflow" and "--serve-artifacts" in args
    assert option["--host"] == "0.0.0.0"
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
    assert env["MLFLOW_DISABLE_TELEMETRY"]["value"] == "true"
    for var in re.findall(r"\$\((\w+)\)", " ".join(args)):  # $(VAR) in args expands from the container's env
        assert var in env, var
    allowed = one(objects, "ConfigMap", "idap-mlflow")["data"]["allowed_hosts"].split(",")
    assert option["--allowed-hosts"] == "$(ALLOWED_HOSTS)"
    tracking = one(objects, "ConfigMap", "idap-mlflow")["data"]["tracking_uri"]
    assert tracking == "http://mlflow.idap.svc.cluster.local:5000"
    assert tracking.split("//")[1] in allowed and "mlflow:5000" in allowed
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
        [header] = container[probe]["httpGet"]["httpHeaders"]
        assert any(fnmatch.fnmatch(header["value"], pattern) for pattern in allowed), header


def test_mlflow_authentication(rendered):
    """basic-auth: the admin from a Secret, the auth database in the backend PostgreSQL, the ini file written
    by an init container into a memory volume both containers mount."""
    _, objects = rendered
    pod = one(objects, "Deployment", "mlflow")["spec"]["template"]["spec"]
    container = _mlflow_container(objects)
    [init] = pod["initContainers"]
    env = {e["name"]: e for e in container["env"]}
    init_env = {e["name"]: e for e in init["env"]}
    for key, var in (("username", "MLFLOW_AUTH_ADMIN_USERNAME"), ("password", "MLFLOW_AUTH_ADMIN_PASSWORD"),
                     ("flask_secret_key", "MLFLOW_FLASK_SERVER_SECRET_KEY")):
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": "idap-mlflow-credentials", "key": key}
    assert init_env["AUTH_DATABASE_URI"]["value"] == env["BACKEND_STORE_URI"]["value"]
    assert init_env["MLFLOW_AUTH_CONFIG_PATH"] == env["MLFLOW_AUTH_CONFIG_PATH"]
    config_dir = str(Path(env["MLFLOW_AUTH_CONFIG_PATH"]["value"]).parent)
    mounts = {m["name"]: m["mountPath"] for c in (init, container) for m in c["volumeMounts"] if m["mountPath"] == config_dir}
    [volume] = [v for v in pod["volumes"] if v["name"] in mounts]
    assert volume["emptyDir"]["medium"] == "Memory"
    assert init["image"] == PROJECT_IMAGE and init["command"][:2] == ["python", "-c"]


def test_network_policies_let_only_the_namespace_in(rendered):
    overlay, objects = rendered
    policies = {p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"]: p
                for p in by_kind(objects, "NetworkPolicy")}
    servers = {"mlflow", "idap-postgres", "idap-ray"} | ({"object-store"} if overlay == "overlays/local" else set())
    assert set(policies) == servers
    for name, policy in policies.items():
        assert policy["spec"]["policyTypes"] == ["Ingress"], name
        for rule in policy["spec"]["ingress"]:
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, f"{name}: only pods of this namespace may connect: {peer}"
    [postgres_rule] = policies["idap-postgres"]["spec"]["ingress"]
    assert postgres_rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}}]
    # every named port a policy opens exists on the pods it selects
    for name, policy in policies.items():
        ports = {p["name"] for o in objects if o["kind"] in WORKLOAD_KINDS
                 and o["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name") == name
                 for c in o["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for rule in policy["spec"]["ingress"]:
            for port in rule.get("ports", []):
                assert port["port"] in ports, (name, port)


def test_pipeline_service_account_and_rbac(rendered):
    _, objects = rendered
    account = one(objects, "ServiceAccount", "idap-pipeline-runner")
    binding = one(objects, "RoleBinding", "idap-pipeline-runner")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "idap-pipeline-runner"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "idap"}]
    rules = one(objects, "Role", "idap-pipeline-runner")["rules"]
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
        if "secrets" in rule["resources"]:
            assert rule.get("resourceNames"), "the steps may read only the Secret KFP names, not every Secret"
    assert any("workflowtaskresults" in r["resources"] for r in rules)  # the Argo executor reports outputs


def _raycluster(objects):
    [cluster] = by_kind(objects, "RayCluster")
    return cluster


def test_raycluster_uses_the_project_image(rendered):
    _, objects = rendered
    cluster = _raycluster(objects)
    assert cluster["apiVersion"] == "ray.io/v1"
    ray_pins = [d for d in PYPROJECT["project"]["dependencies"] if d.startswith("ray[")]
    assert {pin.split("==")[1] for pin in ray_pins} == {cluster["spec"]["rayVersion"]}
    assert any("default" in pin for pin in ray_pins), "dashboard, Jobs API and autoscaler need ray[default]"
    head, workers = cluster["spec"]["headGroupSpec"], cluster["spec"]["workerGroupSpecs"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"  # the Jobs API answers the namespace
    for group in [head, *workers]:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())  # KubeRay wants strings
        for container in group["template"]["spec"]["containers"]:
            assert container["image"] == PROJECT_IMAGE
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["RAY_USAGE_STATS_ENABLED"] == "0" and env["DO_NOT_TRACK"] == "true"
            assert env["RAY_AUTH_MODE"] in ("disabled", "token")


def test_raycluster_structure(rendered):
    """Structural check of the custom resource (see CUSTOM_KINDS for why not a schema): autoscaled CPU
    workers, an optional GPU group, shared memory on every Ray pod, sized autoscaler sidecar."""
    overlay, objects = rendered
    cluster = _raycluster(objects)
    spec = cluster["spec"]
    assert set(spec) <= {"rayVersion", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec",
                         "workerGroupSpecs", "suspend", "headServiceAnnotations", "gcsFaultToleranceOptions"}
    assert spec["enableInTreeAutoscaling"] is True
    autoscaler = spec["autoscalerOptions"]
    assert {"cpu", "memory"} <= set(autoscaler["resources"]["limits"])
    assert autoscaler["securityContext"]["allowPrivilegeEscalation"] is False
    groups = {w["groupName"]: w for w in spec["workerGroupSpecs"]}
    cpu = groups["cpu-workers"]
    assert 0 <= cpu["minReplicas"] <= cpu["replicas"] <= cpu["maxReplicas"] and cpu["maxReplicas"] > cpu["minReplicas"]
    if overlay == "overlays/local":
        assert "gpu-workers" not in groups  # no GPU nodes on a laptop cluster
    else:
        gpu = groups["gpu-workers"]
        assert gpu["minReplicas"] == 0 and gpu["replicas"] == 0 and gpu["maxReplicas"] >= 1
        [container] = gpu["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == container["resources"]["requests"]["nvidia.com/gpu"]
        assert any(t["key"] == "nvidia.com/gpu" for t in gpu["template"]["spec"]["tolerations"])
    for pod in pod_specs(cluster):
        shm = [v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
        [container] = pod["containers"]
        assert {m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"} == {v["name"] for v in shm}
        assert len(shm) == 1
        limits = container["resources"]["limits"]
        assert limits == container["resources"]["requests"], "KubeRay advises requests == limits"


def _unknown_fields(obj, schema, path="") -> list[str]:
    """Fields of ``obj`` its CRD's structural schema does not declare (the API server would prune them)."""
    if isinstance(obj, dict) and not schema.get("x-kubernetes-preserve-unknown-fields"):
        props, extra = schema.get("properties"), schema.get("additionalProperties")
        found = []
        for key, value in obj.items():
            if props is not None and key in props:
                found += _unknown_fields(value, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += _unknown_fields(value, extra, f"{path}.{key}")
            elif props is not None:
                found.append(f"{path}.{key}")
        return found
    if isinstance(obj, list) and "items" in schema:
        return [f for i, v in enumerate(obj) for f in _unknown_fields(v, schema["items"], f"{path}[{i}]")]
    return []


@pytest.mark.skipif(not os.environ.get("IDAP_RAYCLUSTER_CRD"), reason="IDAP_RAYCLUSTER_CRD not set: KubeRay's "
                    "CRD is not available offline; test_raycluster_structure checks the shape instead")
def test_raycluster_matches_the_kuberay_crd(rendered):
    import jsonschema

    _, objects = rendered
    crd = yaml.safe_load(Path(os.environ["IDAP_RAYCLUSTER_CRD"]).read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = version["schema"]["openAPIV3Schema"]
    cluster = _raycluster(objects)
    errors = [f"{list(e.path)}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(cluster)]
    assert not errors
    assert not _unknown_fields({"spec": cluster["spec"]}, schema)


def test_ray_pods_get_the_pipeline_steps_environment(rendered):
    """Trials (and Ray jobs) log to the same MLflow and object store as the steps, from the same sources."""
    from pipelines._platform import PlatformSettings

    _, objects = rendered
    settings = PlatformSettings()
    expected = {env: ("configMapKeyRef", name, key) for name, keys in settings.config_maps().items()
                for key, env in keys.items()}
    expected |= {env: ("secretKeyRef", name, key) for name, keys in settings.secrets().items()
                 for key, env in keys.items()}
    for container in containers([_raycluster(objects)]):
        sources = {}
        for env in container["env"]:
            for kind, ref in env.get("valueFrom", {}).items():
                sources[env["name"]] = (kind, ref["name"], ref["key"])
        assert {k: sources.get(k) for k in expected} == expected, container["name"]


def test_overlays_size_the_ray_workers():
    local, production = (_raycluster(render(o))["spec"]["workerGroupSpecs"][0] for o in OVERLAYS)
    assert local["replicas"] == 1
    assert production["maxReplicas"] > local["maxReplicas"]
    gpu = _raycluster(render("overlays/production"))["spec"]["workerGroupSpecs"][1]
    assert gpu["template"]["spec"]["nodeSelector"]


def test_postgres_in_cluster_or_external_by_secret(tmp_path):
    """In-cluster PostgreSQL keeps its data on a PVC; the external-database component removes it, and the
    server then reaches whatever host the Secret names."""
    production = render("overlays/production")
    [claim] = one(production, "StatefulSet", "idap-postgres")["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    db_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in _mlflow_container(production)["env"]
              if "secretKeyRef" in e.get("valueFrom", {})}
    assert db_env["DB_HOST"] == {"name": "idap-db-credentials", "key": "host"}
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": [os.path.relpath(INFRA / "overlays/production", tmp_path)],
                     "components": [os.path.relpath(INFRA / "components/external-database", tmp_path)]}
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    external = kustomize(tmp_path)
    names = {object_id(o) for o in external}
    assert not [n for n in names if "idap-postgres" in n]
    assert names == {object_id(o) for o in production} - {
        "StatefulSet/idap/idap-postgres", "Service/idap/idap-postgres", "NetworkPolicy/idap/idap-postgres-ingress"}


def test_kustomize_failures_are_reported(tmp_path):
    """A broken kustomization fails the render loudly (the helper cannot hand back a partial result)."""
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(AssertionError, match="missing.yaml"):
        kustomize(tmp_path)


def test_the_hand_written_renderer_is_gone():
    assert not (INFRA / "render.py").exists()
