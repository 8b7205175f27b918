"""MLflow runs at the edge: one parent run per pipeline run, a nested run per step.

Every Kubeflow step is its own process, so nothing here relies on MLflow's fluent active-run stack: runs
are created and closed with ``MlflowClient`` and explicit run ids, and a step only needs the parent's id.

* ``start_pipeline_run`` / ``step_run`` / ``finish_pipeline_run``: the run tree. A failing step marks
  itself and the pipeline run FAILED and re-raises; a run left RUNNING by a killed process is marked
  KILLED by the next step on the same host.
* ``StepTracker``: what a step logs (metrics per pruning step, params, the recipe, the dataset, the report).
* ``log_pipeline_summary``: the parent run's final metrics, key settings and Markdown description.

The connection (configuration, the client, clear errors, the sqlite store lock) is ``components.services.mlflow_backend``;
registration and promotion by rule live in ``components.services.registry``.

Example:
    >>> parent = start_pipeline_run("compress cnn_small")                         # doctest: +SKIP
    >>> with step_run(parent, "compress", params={"model": "cnn_small"}) as t:     # doctest: +SKIP
    ...     t.log_recipe(recipe); t.on_step(record)
    >>> finish_pipeline_run(parent)                                                # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from components.services.mlflow_backend import (
    MAX_TAG_CHARS,
    TrackingError,
    as_recipe,
    clear_errors,
    code_version,
    configure,
    fail_fast,
    get_client,
    get_experiment_id,
    is_number,
    is_unreachable,
    param_value,
    source_tags,
    str_dict,
)
from components.services.summaries import report_metrics, report_tags, summary_markdown

__all__ = ["StepTracker", "finish_pipeline_run", "log_pipeline_summary", "start_pipeline_run", "step_run"]

log = logging.getLogger("idap.tracking")

RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
STAGE_CODES = {"dense": 0, "filter": 1, "layer": 2, "finetune": 3}  # the "stage" metric
# Step runs are named "01 prepare_data" ... "08 register": MLflow lists child runs newest first, a name
# sort then reads as the pipeline. Steps not listed (another pipeline's) keep their plain name.
STEP_ORDER = ("prepare_data", "train_baseline", "score_divergence", "prune_filters", "prune_layers", "finetune",
              "evaluate", "register")
# The recipe settings a pipeline's parent run shows as params, so runs compare side by side in the table.
KEY_RECIPE_PARAMS = ("seed", "max_accuracy_drop", "target_macs_reduction", "target_params_reduction", "stage_slack",
                     "filter.importance", "filter.ranking", "filter.score_point", "filter.p0", "filter.steps",
                     "layer.enabled", "layer.max_removals", "layer.epsilon", "recovery.step_budget",
                     "recovery.final_budget", "recovery.teacher")
_MAX_PARAMS_PER_BATCH = 100


# --- the run tree -------------------------------------------------------------------------------------------


def start_pipeline_run(run_name: str, *, tags: dict | None = None) -> str:
    """Create the parent run of a pipeline run and return its id; it stays RUNNING until
    ``finish_pipeline_run`` (or a failing step marks it FAILED)."""
    settings = configure()
    client = get_client(settings)
    with clear_errors(settings.tracking_uri):
        run = client.create_run(get_experiment_id(settings), run_name=run_name,
                                tags=str_dict({"idap.kind": "pipeline", "idap.code_version": code_version(),
                                                **source_tags(), **(tags or {})}))
    return run.info.run_id


def finish_pipeline_run(run_id: str, status: str = "FINISHED") -> None:
    """Close the parent run. A run already FAILED or KILLED by a step keeps that status."""
    if status not in RUN_STATUSES:
        raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
    settings = configure()
    client = get_client(settings)
    with clear_errors(settings.tracking_uri):
        current = client.get_run(run_id).info.status
        if current in ("FAILED", "KILLED") and status == "FINISHED":
            log.warning("pipeline run %s stays %s (a step failed)", run_id, current)
            return
        client.set_terminated(run_id, status)


def log_pipeline_summary(parent_run_id: str, *, report: dict, recipe, dataset: dict,
                         registration: dict | None = None, base_model: str | None = None) -> None:
    """The run a user opens first says what the pipeline did: the final metrics (``dense_*``,
    ``compressed_*``, ratios), the recipe's key settings, model and dataset as params, the dataset as an
    input, the target verdict and the registered version with its decision as tags, and a Markdown
    description (``mlflow.note.content``, the run page's Description). Report files stay in the
    ``evaluate`` step run (logged once)."""
    recipe = as_recipe(recipe)
    settings = configure()
    tracker = StepTracker(get_client(settings), parent_run_id, tracking_uri=settings.tracking_uri)
    flat = recipe.flat()
    params = {"model": report.get("model", "unknown"), "dataset": dataset.get("name", "unknown"),
              **{f"recipe.{k}": flat.get(k) for k in KEY_RECIPE_PARAMS if k in flat}}
    if base_model:
        params["base_model"] = base_model
    tracker.log_params(params)
    tracker.log_report(report, files=False)
    tracker.log_dataset(dataset)
    tags = {"idap.recipe_digest": recipe.digest(), "idap.model": report.get("model", "unknown")}
    if registration:
        tags.update({"idap.registered_model": registration.get("name"),
                     "idap.registered_version": registration.get("version"),
                     "idap.promotion": registration.get("decision"),
                     "idap.promotion_reason": registration.get("reason")})
    tags["mlflow.note.content"] = summary_markdown(report, recipe, registration)
    tracker.set_tags(tags)


@contextlib.contextmanager
def step_run(parent_run_id: str | None, step: str, *, params: dict | None = None) -> Iterator[StepTracker]:
    """A run for one pipeline step, nested under ``parent_run_id`` (top level when it is None or "").

    On an exception the step run and the parent run are marked FAILED (KILLED on Ctrl-C) and the
    exception is re-raised; the error is kept as the tag ``idap.error``. System metrics (CPU, memory,
    GPU) are sampled into the step run when ``psutil`` is installed.

    Example:
        >>> with step_run(parent_id, "train", params={"epochs": 3}) as tracker:   # doctest: +SKIP
        ...     tracker.log_metrics({"val_acc": 97.1})
    """
    settings = configure()
    client = get_client(settings)
    parent_run_id = parent_run_id or None
    with clear_errors(settings.tracking_uri):
        tags = {"idap.step": step, "idap.code_version": code_version(), **source_tags(), **_owner_tags()}
        if parent_run_id:
            experiment_id = client.get_run(parent_run_id).info.experiment_id
            tags["mlflow.parentRunId"] = parent_run_id
        else:
            experiment_id = get_experiment_id(settings)
        end_dead_runs(client, experiment_id)
        if step in STEP_ORDER and parent_run_id:
            tags["idap.step_index"] = STEP_ORDER.index(step) + 1
        name = f"{tags['idap.step_index']:02d} {step}" if "idap.step_index" in tags else step
        run = client.create_run(experiment_id, run_name=name, tags=str_dict(tags))
    tracker = StepTracker(client, run.info.run_id, parent_run_id=parent_run_id, tracking_uri=settings.tracking_uri)
    monitor = None
    try:
        if params:
            tracker.log_params(params)
        monitor = _start_system_metrics(run.info.run_id, settings.tracking_uri)
        yield tracker
    except BaseException as error:
        _stop_system_metrics(monitor)
        if isinstance(error, SystemExit) and error.code in (None, 0):
            _terminate(client, run.info.run_id, "FINISHED", settings.tracking_uri)
            raise
        status = "KILLED" if isinstance(error, KeyboardInterrupt | SystemExit) else "FAILED"
        _mark_failed(client, run.info.run_id, parent_run_id, step, error, status)
        raise
    else:
        _stop_system_metrics(monitor)
        _terminate(client, run.info.run_id, "FINISHED", settings.tracking_uri)


# --- runs whose process died ---------------------------------------------------------------------------------
# A step run lives exactly as long as the process inside ``step_run``; these tags say which process that is,
# so a later run on the same host can tell a run left RUNNING by a SIGKILL (or an OOM kill) from a live one.
OWNER_TAGS = ("idap.owner_host", "idap.owner_pid", "idap.owner_started")


def _process_started(pid: int) -> str | None:
    """When process ``pid`` started (psutil), or None when it does not exist."""
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def _owner_tags() -> dict:
    import socket

    return dict(zip(OWNER_TAGS, (socket.gethostname(), os.getpid(), _process_started(os.getpid())), strict=True))


def end_dead_runs(client, experiment_id: str) -> list[str]:
    """Mark KILLED every RUNNING step run of this host whose process is gone; returns their ids.

    Only runs tagged by ``step_run`` are looked at (a pipeline's parent run legitimately outlives the
    step that opened it) and only those of this host (another machine's processes cannot be seen).
    """
    import socket

    host = socket.gethostname()
    with contextlib.suppress(Exception):  # housekeeping: never the reason a run cannot start
        runs = client.search_runs([experiment_id], max_results=200,
                                  filter_string=f"attributes.status = 'RUNNING' and tags.`idap.owner_host` = '{host}'")
        dead = []
        for run in runs:
            tags = run.data.tags
            pid = int(tags.get("idap.owner_pid", "0") or 0)
            if pid and _process_started(pid) != tags.get("idap.owner_started"):
                client.set_tag(run.info.run_id, "idap.error",
                               f"process {pid} on {host} ended while the run was RUNNING (killed); marked KILLED")
                client.set_terminated(run.info.run_id, "KILLED")
                dead.append(run.info.run_id)
        return dead
    return []


def _terminate(client, run_id: str, status: str, uri: str) -> None:
    with clear_errors(uri):
        client.set_terminated(run_id, status)


def _mark_failed(client, run_id: str, parent_run_id: str | None, step: str, error: BaseException, status: str) -> None:
    """Best effort: a tracking failure here must not hide the step's own exception."""
    message = f"{type(error).__name__}: {error}"[:MAX_TAG_CHARS]
    unreachable = isinstance(error, TrackingError) or is_unreachable(error)
    with fail_fast() if unreachable else contextlib.nullcontext():
        for rid, tags in ((run_id, {"idap.error": message}),
                          (parent_run_id, {"idap.failed_step": step, "idap.error": message})):
            if not rid:
                continue
            try:
                for key, value in tags.items():
                    client.set_tag(rid, key, value)
                client.set_terminated(rid, status)
            except Exception as mark_error:  # the server may be the reason we are failing
                log.warning("could not mark run %s %s: %s", rid, status, mark_error)
                if unreachable:
                    return


def _start_system_metrics(run_id: str, uri: str):
    """Sample CPU / memory / GPU into the run when psutil is available and not switched off."""
    if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").lower() in ("false", "0"):
        return None
    try:
        import psutil  # noqa: F401  (mlflow's monitors need it)
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, tracking_uri=uri)
        monitor.start()
        return monitor
    except Exception as error:  # ImportError without psutil; nothing the step should fail on
        log.debug("system metrics off: %s", error)
        return None


def _stop_system_metrics(monitor) -> None:
    if monitor is not None:
        with contextlib.suppress(Exception):
            monitor.finish()


class StepTracker:
    """What a step logs into its run. Every method talks to MLflow with the explicit ``run_id``."""

    def __init__(self, client, run_id: str, *, parent_run_id: str | None = None, tracking_uri: str | None = None):
        self.client = client
        self.run_id = run_id
        self.parent_run_id = parent_run_id
        self._uri = tracking_uri
        self._index = 0

    def on_step(self, rec) -> None:
        """An ``idap.prune.state.StepRecord`` as metrics ``params``, ``macs``, ``val_acc``, ``stage`` (code:
        dense 0, filter 1, layer 2, finetune 3) and ``accepted``, at a running step index."""
        from mlflow.entities import Metric

        step, self._index = self._index, self._index + 1
        now = int(time.time() * 1000)
        values = {"params": rec.params, "macs": rec.macs, "val_acc": rec.val_acc,
                  "stage": STAGE_CODES.get(rec.stage, -1), "accepted": 1.0 if rec.accepted else 0.0}
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        with clear_errors(self._uri):
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), param_value(v)) for k, v in params.items()]
        with clear_errors(self._uri):
            for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, params=items[i:i + _MAX_PARAMS_PER_BATCH])

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(str(k), float(v), now, step or 0) for k, v in metrics.items() if is_number(v)]
        with clear_errors(self._uri):
            if items:
                self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        with clear_errors(self._uri):
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in str_dict(tags).items()])

    def log_plan(self, plan) -> None:
        """The run's time plan (``idap.prune.timing.RunPlan``) before its first pruning step: the measured step
        costs and sized budgets as ``plan.*`` params, the estimate as a metric, the plan line as a tag."""
        c = plan.costs
        self.log_params({"plan.optimizer_step_ms": round(c.optimizer_step * 1000, 2),
                         "plan.evaluation_s": round(c.evaluation, 2), "plan.scoring_s": round(c.scoring, 2),
                         "plan.step_recovery": plan.step_recovery, "plan.final_steps": plan.final_steps,
                         "plan.calibration_size": plan.calibration_size, "plan.time_budget_s": plan.time_budget,
                         "plan.sized": "; ".join(plan.sized) or "nothing"})
        self.log_metrics({"plan_estimate_s": plan.estimate_s, "plan_max_s": plan.max_s})
        self.set_tags({"idap.plan": plan.line()[:MAX_TAG_CHARS]})

    def log_recipe(self, recipe) -> None:
        """The whole recipe as params (``section.field``), ``recipe.yaml``, and the tag ``idap.recipe_digest``."""
        recipe = as_recipe(recipe)
        self.log_params(recipe.flat())
        self.set_tags({"idap.recipe_digest": recipe.digest()})
        with clear_errors(self._uri):
            self.client.log_text(self.run_id, recipe.to_yaml(), "recipe.yaml")

    def log_dataset(self, info: dict) -> None:
        """``DataSplits.describe()``: tags ``idap.dataset`` / ``idap.dataset_hash``, sizes as params, and an
        MLflow dataset input (name + content hash) so the run page shows what it was trained on."""
        name, content_hash = str(info.get("name", "unknown")), str(info.get("content_hash", "unknown"))
        self.set_tags({"idap.dataset": name, "idap.dataset_hash": content_hash})
        params = {"dataset.name": name, **{f"dataset.{k}": info[k] for k in ("seed", "num_classes", "in_channels",
                                                                            "image_size") if k in info}}
        params.update({f"dataset.size.{k}": v for k, v in (info.get("sizes") or {}).items()})
        self.log_params(params)
        try:
            from mlflow.data.code_dataset_source import CodeDatasetSource
            from mlflow.data.meta_dataset import MetaDataset
            from mlflow.entities import DatasetInput, InputTag

            dataset = MetaDataset(CodeDatasetSource({"idap.dataset": name, "content_hash": content_hash}),
                                  name=name, digest=content_hash[:32])
            with fail_fast():  # optional: the tags above already carry the lineage
                self.client.log_inputs(self.run_id, [DatasetInput(dataset._to_mlflow_entity(),
                                                                  [InputTag("mlflow.data.context", "train")])])
        except Exception as error:  # e.g. two steps logging the same dataset at once
            log.warning("could not log the dataset as an MLflow input: %s", error)

    def log_report(self, report: dict, report_dir: str | os.PathLike | None = None, *, files: bool = True) -> None:
        """``dense_*`` / ``compressed_*`` / ratio metrics, the target verdict and warnings as tags, and (with
        ``files``) report.json / report.md / plots (from ``report_dir``) plus the divergence profile as
        artifacts under ``report/``. Pass ``files=False`` where another run already holds the files."""
        self.log_metrics(report_metrics(report))
        self.set_tags(report_tags(report))
        if not files:
            return
        with clear_errors(self._uri):
            written = False
            if report_dir is not None:
                directory = Path(report_dir)
                files_ = sorted(p for p in directory.glob("*") if p.is_file()
                                and (p.name.startswith("report.") or p.suffix in (".png", ".html", ".svg")))
                for path in files_:
                    self.client.log_artifact(self.run_id, str(path), "report")
                written = any(p.name == "report.json" for p in files_)
            if not written:
                self.client.log_dict(self.run_id, report, "report/report.json")
            if report.get("divergence_profile"):
                self.client.log_dict(self.run_id, report["divergence_profile"], "report/divergence_profile.json")

    def log_artifacts(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """A file or a directory (e.g. the bundle) as run artifacts."""
        path = Path(path)
        if not path.exists():
            raise TrackingError(f"cannot log {path} to run {self.run_id}: it does not exist")
        with clear_errors(self._uri):
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self.client.log_artifact(self.run_id, str(path), artifact_path)
