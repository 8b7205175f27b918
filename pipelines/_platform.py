"""Kubernetes platform config of a pipeline step, by the step's kind: the environment that points it at the
cluster's MLflow and object store, CPU / memory / GPU, GPU node placement, retries and caching.

One call per task::

    from pipelines._platform import configure
    task = configure(finetune(...), "finetune", gpus=gpus)   # gpus: an int or a pipeline parameter

What each task gets (compiled into the pipeline's platform spec through ``kfp-kubernetes``):

* env from the ConfigMaps and Secrets ``infra/`` creates (names: :class:`PlatformSettings`;
  tests/pipelines/test_platform.py checks that the rendered manifests define exactly these names and keys)::

      idap-mlflow                    tracking_uri       -> MLFLOW_TRACKING_URI
      idap-object-store              endpoint_url       -> AWS_ENDPOINT_URL   (boto3 and MLflow's S3 client)
                                     region             -> AWS_DEFAULT_REGION
                                     bucket             -> IDAP_BUCKET
      idap-object-store-credentials  access_key_id      -> AWS_ACCESS_KEY_ID
                                     secret_access_key  -> AWS_SECRET_ACCESS_KEY
      idap-mlflow-credentials        username, password -> MLFLOW_TRACKING_USERNAME / _PASSWORD

* CPU and memory requests and limits per kind (:data:`STEPS`); GPU-capable kinds (training, recovery
  fine-tuning) ask for ``gpus`` accelerators of ``gpu_resource`` and take the GPU node selector and
  tolerations, when set; scoring, evaluation and registration stay on CPU.
* retries with exponential backoff on kinds that are safe to retry. What a retry recovers: a pod lost to
  eviction, preemption, node failure or an OOM kill, and failures before the step opens its MLflow run
  (MLflow or S3 unreachable at start); each step writes only its own outputs, so an attempt that dies half
  way leaves nothing a new attempt trips over. An exception inside a step's MLflow run marks the pipeline's
  MLflow run FAILED (components/_tracking.step_run), and a FAILED run never registers a model, so that
  kind of failure is not rescued by a retry. (A ``prepare-data`` attempt lost after it opened the parent
  run leaves that run RUNNING; the next attempt opens a new one, which the later steps use.)
  ``register-model`` is never retried: it closes the pipeline's
  MLflow run and a failed attempt marks it FAILED. Registering is idempotent all the same (a version that
  already holds the same bundle digest is returned, not registered again: components/_registry
  ``register_and_promote`` / ``_find_version``), so re-running a whole pipeline is safe.
* caching per kind: off for every kind. ``prepare-data`` opens the MLflow parent run (a cached one would
  hand on a finished run's id); ``register-model`` writes to the registry; every other step takes the run
  id as an input, so its cache key is unique to one pipeline run and a cache hit could never happen.

The local runner (``kfp.local``) ignores the platform spec and the resources, but it honours retries (with
their backoff): run ``without_retries(pipeline)(**arguments)`` locally so that a failing step fails at
once, or set ``IDAP_K8S_RETRIES=0`` in the process that imports and runs the pipeline.

Settings are read when the pipeline is compiled, from ``IDAP_K8S_*`` variables (like ``IDAP_IMAGE``)::

    IDAP_K8S_TRACKING_CONFIG_MAP, IDAP_K8S_OBJECT_STORE_CONFIG_MAP, IDAP_K8S_OBJECT_STORE_SECRET,
    IDAP_K8S_MLFLOW_SECRET, IDAP_K8S_SERVICE_ACCOUNT   names (defaults: the names infra/ defines)
    IDAP_K8S_GPU_RESOURCE       the accelerator resource (default nvidia.com/gpu)
    IDAP_K8S_GPU_NODE_SELECTOR  JSON object, e.g. {"idap.io/accelerator": "nvidia-gpu"}
    IDAP_K8S_GPU_TOLERATIONS    JSON list, e.g. [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                  "effect": "NoSchedule"}]
    IDAP_K8S_RETRIES            attempts after the first on retry-safe kinds (default 2; 0 = none)

Example:
    >>> settings = PlatformSettings.from_env({"IDAP_K8S_GPU_NODE_SELECTOR": '{"pool": "gpu"}'})
    >>> settings.gpu_node_selector, settings.tracking_config_map
    ({'pool': 'gpu'}, 'idap-mlflow')
"""

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from kfp import dsl, kubernetes
from kfp.dsl import pipeline_channel

RETRY_BACKOFF = {"backoff_duration": "30s", "backoff_factor": 2.0, "backoff_max_duration": "1800s"}


class PlatformError(ValueError):
    """A platform setting or step kind that cannot be compiled."""


@dataclass(frozen=True)
class StepProfile:
    """What one kind of step asks the cluster for."""

    cpu: tuple[str, str]  # (request, limit)
    memory: tuple[str, str]  # (request, limit)
    gpu_capable: bool = False  # may ask for GPUs (training / recovery fine-tuning)
    retry: bool = True  # safe to retry (see the module docstring)
    cache: bool = False  # see the module docstring: no step can profit from the KFP cache


# Sized for the image (torch + idap: ~1 GB resident before any data) and the models the recipes compress;
# torch threads follow the CPU limit. evaluate gets request == limit: its latency figures need a CPU of
# their own (Guaranteed QoS), not whatever a noisy neighbour leaves.
STEPS: dict[str, StepProfile] = {
    "prepare-data": StepProfile(cpu=("500m", "2"), memory=("2Gi", "4Gi")),
    "train-baseline": StepProfile(cpu=("2", "4"), memory=("4Gi", "8Gi"), gpu_capable=True),
    "score-divergence": StepProfile(cpu=("2", "4"), memory=("4Gi", "8Gi")),
    "prune-filters": StepProfile(cpu=("2", "4"), memory=("4Gi", "8Gi"), gpu_capable=True),
    "prune-layers": StepProfile(cpu=("2", "4"), memory=("4Gi", "8Gi"), gpu_capable=True),
    "finetune": StepProfile(cpu=("2", "4"), memory=("4Gi", "8Gi"), gpu_capable=True),
    "evaluate": StepProfile(cpu=("2", "2"), memory=("4Gi", "4Gi")),
    "register-model": StepProfile(cpu=("500m", "1"), memory=("2Gi", "4Gi"), retry=False),
    # a Ray Tune search: the driver runs here (local Ray) or submits a job to the RayCluster. Not retried:
    # a new attempt starts the search over and logs every trial to MLflow a second time.
    "search": StepProfile(cpu=("2", "4"), memory=("4Gi", "8Gi"), gpu_capable=True, retry=False),
    # bookkeeping between steps (pick a recipe, read results back)
    "light": StepProfile(cpu=("250m", "1"), memory=("1Gi", "2Gi")),
}

# (ConfigMap key -> env) and (Secret key -> env): what components/_settings, boto3 and MLflow read.
TRACKING_ENV = {"tracking_uri": "MLFLOW_TRACKING_URI"}
OBJECT_STORE_ENV = {"endpoint_url": "AWS_ENDPOINT_URL", "region": "AWS_DEFAULT_REGION", "bucket": "IDAP_BUCKET"}
OBJECT_STORE_SECRET_ENV = {"access_key_id": "AWS_ACCESS_KEY_ID", "secret_access_key": "AWS_SECRET_ACCESS_KEY"}
MLFLOW_SECRET_ENV = {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}


@dataclass(frozen=True)
class PlatformSettings:
    """Compile-time names and GPU placement; the defaults are exactly what ``infra/`` defines."""

    tracking_config_map: str = "idap-mlflow"
    object_store_config_map: str = "idap-object-store"
    object_store_secret: str = "idap-object-store-credentials"
    mlflow_secret: str = "idap-mlflow-credentials"
    service_account: str = "idap-pipeline-runner"  # for runs submitted to the cluster (infra/README.md)
    gpu_resource: str = "nvidia.com/gpu"
    gpu_node_selector: Mapping[str, str] = field(default_factory=dict)
    gpu_tolerations: tuple[Mapping, ...] = ()
    retries: int = 2

    def __post_init__(self):
        names = ("tracking_config_map", "object_store_config_map", "object_store_secret", "mlflow_secret",
                 "service_account", "gpu_resource")
        for name in names:
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise PlatformError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        if not isinstance(self.retries, int) or isinstance(self.retries, bool) or not 0 <= self.retries <= 10:
            raise PlatformError(f"retries must be an integer in [0, 10], got {self.retries!r}")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in dict(self.gpu_node_selector).items()):
            raise PlatformError(f"gpu_node_selector must map strings to strings, got {self.gpu_node_selector!r}")
        for toleration in self.gpu_tolerations:
            if not isinstance(toleration, Mapping) or not {"key", "operator"} & set(toleration):
                raise PlatformError(f"each GPU toleration must be an object with a key or an operator, got {toleration!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "PlatformSettings":
        """The settings from ``IDAP_K8S_*`` variables (``os.environ`` by default); unset = the default."""
        env = os.environ if env is None else env
        values: dict = {}
        for name in ("tracking_config_map", "object_store_config_map", "object_store_secret", "mlflow_secret",
                     "service_account", "gpu_resource"):
            if env.get(f"IDAP_K8S_{name.upper()}"):
                values[name] = env[f"IDAP_K8S_{name.upper()}"]
        selector = _json(env, "IDAP_K8S_GPU_NODE_SELECTOR", dict)
        if selector is not None:
            values["gpu_node_selector"] = selector
        tolerations = _json(env, "IDAP_K8S_GPU_TOLERATIONS", list)
        if tolerations is not None:
            values["gpu_tolerations"] = tuple(tolerations)
        if env.get("IDAP_K8S_RETRIES"):
            try:
                values["retries"] = int(env["IDAP_K8S_RETRIES"])
            except ValueError:
                raise PlatformError(f"IDAP_K8S_RETRIES must be an integer, got {env['IDAP_K8S_RETRIES']!r}") from None
        try:
            return cls(**values)
        except PlatformError as error:
            raise PlatformError(f"IDAP_K8S_* settings: {error}") from None

    def config_maps(self) -> dict[str, dict[str, str]]:
        """``{ConfigMap name: {key: env}}`` every step reads."""
        return {self.tracking_config_map: TRACKING_ENV, self.object_store_config_map: OBJECT_STORE_ENV}

    def secrets(self) -> dict[str, dict[str, str]]:
        """``{Secret name: {key: env}}`` every step reads."""
        return {self.object_store_secret: OBJECT_STORE_SECRET_ENV, self.mlflow_secret: MLFLOW_SECRET_ENV}


def _json(env: Mapping[str, str], name: str, kind: type):
    raw = env.get(name)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as error:
        raise PlatformError(f"{name} is not valid JSON ({error}): {raw!r}") from None
    if not isinstance(value, kind):
        raise PlatformError(f"{name} must hold a JSON {'object' if kind is dict else 'list'}, got {raw!r}")
    return value


def configure(task: dsl.PipelineTask, step: str, *, gpus=0,
              settings: PlatformSettings | None = None) -> dsl.PipelineTask:
    """Apply the platform config of the kind ``step`` (a key of :data:`STEPS`) to ``task`` and return it.

    Args:
        gpus: accelerators for a GPU-capable kind: an int, or a pipeline parameter (an Integer channel; 0 at
            run time asks for none). Ignored, with no GPU placement, for CPU kinds.
        settings: names and GPU placement (default: :meth:`PlatformSettings.from_env`, read at compile time).
    """
    if step not in STEPS:
        raise PlatformError(f"unknown step kind {step!r}; valid: {sorted(STEPS)}")
    profile = STEPS[step]
    settings = settings or PlatformSettings.from_env()
    for name, mapping in settings.config_maps().items():
        kubernetes.use_config_map_as_env(task, config_map_name=name, config_map_key_to_env=mapping)
    for name, mapping in settings.secrets().items():
        kubernetes.use_secret_as_env(task, secret_name=name, secret_key_to_env=mapping)
    task.set_cpu_request(profile.cpu[0]).set_cpu_limit(profile.cpu[1])
    task.set_memory_request(profile.memory[0]).set_memory_limit(profile.memory[1])
    if profile.gpu_capable and _asks_for_gpus(gpus):
        task.set_accelerator_type(settings.gpu_resource).set_accelerator_limit(gpus)
        for key, value in dict(settings.gpu_node_selector).items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for toleration in settings.gpu_tolerations:
            kubernetes.add_toleration_json(task, dict(toleration))
    if profile.retry and settings.retries:
        task.set_retry(num_retries=settings.retries, **RETRY_BACKOFF)
    task.set_caching_options(profile.cache)
    return task


def without_retries(pipeline):
    """A copy of a ``@dsl.pipeline`` with no task retry policies, for ``kfp.local`` (the original is untouched).

    Example:
        >>> local.init(runner=local.SubprocessRunner(use_venv=False))        # doctest: +SKIP
        >>> without_retries(compress_pipeline)(dataset="digits")             # doctest: +SKIP
    """
    spec = type(pipeline.pipeline_spec)()
    spec.CopyFrom(pipeline.pipeline_spec)
    dags = [spec.root.dag, *(c.dag for c in spec.components.values() if c.HasField("dag"))]
    for dag in dags:
        for task in dag.tasks.values():
            task.ClearField("retry_policy")
    local = copy.copy(pipeline)
    local.component_spec = copy.copy(pipeline.component_spec)
    local.component_spec.implementation = copy.copy(pipeline.component_spec.implementation)
    local.component_spec.implementation.graph = spec
    return local


def _asks_for_gpus(gpus) -> bool:
    """A pipeline parameter may ask at run time; a literal asks when it is a positive integer."""
    if isinstance(gpus, pipeline_channel.PipelineChannel):
        return True
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise PlatformError(f"gpus must be a non-negative integer or a pipeline parameter, got {gpus!r}")
    return gpus > 0
