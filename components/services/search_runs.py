"""MLflow for a search, written from the Ray driver only: every trial a nested run, the search run's summary.

:class:`TrialRuns` is a Tune callback (callbacks run in the driver), so a sqlite store keeps one writer:
each trial is a nested run of the search run (``mlflow.parentRunId``) with its params, per-step and final
metrics, FAILED or KILLED when it did not finish. :func:`log_search` puts the summary metrics, the winner
and every result file on the search run.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence

from ray.tune import Callback

from components.services.search_results import SearchResult
from idap.prune.config import Recipe

__all__ = ["TrialRuns", "log_search", "trial_error"]

log = logging.getLogger("idap.tune")


class TrialRuns(Callback):
    """Every trial as a nested MLflow run of the search run: params, per-step metrics, final status.

    Runs in the driver (Tune callbacks do), so a sqlite store has one writer. Picklable: Tune saves it with
    the experiment, and a restored search finds the runs of earlier attempts by their ``idap.trial_id`` tag.
    """

    def __init__(self, search_run_id: str, base: dict, paths: Sequence[str], default_point: dict):
        self.search_run_id = search_run_id
        self.base = base
        self.paths = list(paths)
        self.default_point = default_point
        self.seconds = 0.0
        self._client = None
        self._runs: dict[str, str] = {}
        self._logged: dict[str, int] = {}

    def __getstate__(self):
        return {**self.__dict__, "_client": None, "_runs": {}, "_logged": {}, "seconds": 0.0}

    @property
    def client(self):
        if self._client is None:
            from components.services import mlflow_backend

            self._client = mlflow_backend.get_client(mlflow_backend.configure())
        return self._client

    @contextlib.contextmanager
    def _timed(self):
        t0 = time.perf_counter()
        try:
            yield
        except Exception as error:  # tracking must not end the search; the run's status shows it
            log.warning("MLflow logging of a trial failed: %s", error)
        finally:
            self.seconds += time.perf_counter() - t0

    def _run_id(self, trial, trials=()) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        from components.services.mlflow_backend import str_dict as _str_dict
        from components.services.tracking import StepTracker

        client = self.client
        parent = client.get_run(self.search_run_id)
        earlier = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.search_run_id}' and tags.`idap.trial_id` = '{trial.trial_id}'")
        for run in earlier:  # an attempt the interrupted driver left open
            if run.info.status == "RUNNING":
                client.set_tag(run.info.run_id, "idap.trial_status", "interrupted")
                client.set_terminated(run.info.run_id, "KILLED")
        config = {p: trial.config.get(p) for p in self.paths}
        is_default = config == self.default_point
        index = next((i for i, t in enumerate(trials) if t is trial), len(self._runs))
        tags = {"mlflow.parentRunId": self.search_run_id, "idap.kind": "trial", "idap.trial_id": trial.trial_id,
                "idap.default_recipe": str(is_default).lower(), "idap.attempt": str(len(earlier) + 1)}
        run = client.create_run(parent.info.experiment_id, run_name=f"trial-{index:03d}" + (" (default)" if is_default else ""),
                                tags=_str_dict(tags))
        tracker = StepTracker(client, run.info.run_id)
        recipe = Recipe.from_dict(self.base).with_overrides(config)
        tracker.log_recipe(recipe)
        tracker.log_params({f"search.{p}": v for p, v in config.items()})
        self._runs[trial.trial_id] = run.info.run_id
        return run.info.run_id

    def _log_result(self, trial, result: dict) -> None:
        from components.services.tracking import StepTracker

        step = int(result.get("training_iteration") or 0)
        if not result or self._logged.get(trial.trial_id, -1) >= step:
            return
        keys = ("val_acc", "drop_pp", "macs", "params", "macs_reduction", "params_reduction", "feasible", "score",
                "stage", "compress_seconds")
        StepTracker(self.client, self._run_id(trial)).log_metrics(
            {k: result[k] for k in keys if k in result}, step=step)
        self._logged[trial.trial_id] = step

    def on_trial_start(self, iteration, trials, trial, **info):
        with self._timed():
            self._run_id(trial, trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        with self._timed():
            self._log_result(trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        with self._timed():
            result = trial.last_result or {}
            self._log_result(trial, result)
            run_id = self._run_id(trial)
            finished = bool(result.get("final"))
            self.client.set_tag(run_id, "idap.trial_status", "complete" if finished else "stopped_early")
            if finished:
                self.client.set_tag(run_id, "idap.feasible", str(bool(result.get("feasible"))).lower())
            self.client.set_terminated(run_id, "FINISHED" if finished else "KILLED")

    def on_trial_error(self, iteration, trials, trial, **info):
        with self._timed():
            from components.services.mlflow_backend import clip as _clip

            run_id = self._run_id(trial)
            error = trial_error(trial)
            self.client.set_tag(run_id, "idap.trial_status", "failed")
            self.client.set_tag(run_id, "idap.error", _clip(error, 5000))
            self.client.set_terminated(run_id, "FAILED")



def trial_error(trial) -> str:
    with contextlib.suppress(Exception):
        error = trial.get_error()
        if error is not None:
            return str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
    return "the trial raised (see its error.txt in the experiment directory)"


def log_search(tracker, result: SearchResult) -> None:
    """The search run: summary metrics, the winner as tags and every result file as an artifact."""
    metrics = {f"seconds_{k}": v for k, v in result.summary["seconds"].items()}
    metrics.update({f"trials_{k}": v for k, v in result.summary["trials"].items()})
    for name, t in (("best", result.winner), ("default", result.default)):
        if t and t["status"] == "complete":
            metrics.update({f"{name}_{k}": t[k] for k in ("val_acc", "drop_pp", "macs_reduction", "params_reduction")})
            metrics.update({f"{name}_{k}": t[k] for k in ("test_acc", "speedup_b1") if t.get(k) is not None})
    tracker.log_metrics(metrics)
    tracker.set_tags({"idap.search_winner": result.winner["trial_id"] if result.winner else "none (base recipe)",
                      "idap.search_front": ",".join(t["trial_id"] for t in result.front)})
    for path in result.files.values():
        tracker.log_artifacts(path, "search" if path.is_file() else f"search/{path.name}")
