"""One trial of ``idap tune`` as it runs in a Ray worker: compress with the trial's recipe, report every step to Tune,
and the scheduler and console callback that watch the trials.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from idap.prune.config import Recipe

INFEASIBLE = 0.0  # the score of a trial over budget: below every feasible reduction (>= 1)
STAGE_CODES = {"filter": 1, "layer": 2, "finetune": 3}



# ---- one trial (runs in a Ray worker) ---------------------------------------------------------
@dataclass
class TrialProgress:
    """Where a trial's model stands after each step, as the metrics it reports."""

    dense_val_acc: float
    dense_macs: int
    dense_params: int
    budget_pp: float
    slack_pp: float
    reduction: str
    started: float
    macs: int = 0  # where the model stands: the dense model's figures until a step is kept
    params: int = 0
    val_acc: float = 0.0
    steps: int = 0

    def __post_init__(self):
        self.macs = self.macs or self.dense_macs
        self.params = self.params or self.dense_params
        self.val_acc = self.val_acc or self.dense_val_acc

    def step(self, rec) -> dict:
        if rec.accepted or rec.action == "stop":  # rollbacks / reverted blocks are not the model carried on
            self.macs, self.params, self.val_acc = rec.macs, rec.params, rec.val_acc
        self.steps += 1
        # mid-run the stages may spend the recipe's slack; the final model is held to the budget itself
        return self.metrics(rec.stage, allowed=self.budget_pp + self.slack_pp, final=False)

    def finish(self, rec, seconds: float) -> dict:
        self.macs, self.params, self.val_acc = rec.macs, rec.params, rec.val_acc
        return {**self.metrics("finetune", allowed=self.budget_pp, final=True), "compress_seconds": round(seconds, 3)}

    def metrics(self, stage: str, *, allowed: float, final: bool) -> dict:
        drop = self.dense_val_acc - self.val_acc
        feasible = drop <= allowed + 1e-9
        macs_red = self.dense_macs / max(1, self.macs)
        params_red = self.dense_params / max(1, self.params)
        reduction = params_red if self.reduction == "params" else macs_red
        return {"val_acc": self.val_acc, "drop_pp": drop, "macs": self.macs, "params": self.params,
                "macs_reduction": macs_red, "params_reduction": params_red, "feasible": float(feasible),
                "score": reduction if feasible else INFEASIBLE, "stage": STAGE_CODES.get(stage, 0),
                "pruning_steps": self.steps, "final": float(final), "trial_started_at": self.started}


def run_trial(config: dict, *, data, dense, base: dict, paths: list[str], budget_pp: float, reduction: str,
           dense_val_acc: float, threads: int, compress_fn: Callable | None) -> None:
    """One compression run: a report after every pruning step, and a last one with the model as checkpoint."""
    import ray
    import torch
    from ray import tune

    from idap.bundle import save_bundle
    from idap.measure.metrics import count_macs, count_params
    from idap.prune.compress import compress

    torch.set_num_threads(threads)
    started = time.time()
    node = {"node_id": ray.get_runtime_context().get_node_id()}  # where it ran: the cluster's node, not the driver
    recipe = Recipe.from_dict(base).with_overrides({p: config[p] for p in paths})
    shape = (data.in_channels, data.image_size, data.image_size)
    progress = TrialProgress(dense_val_acc, count_macs(dense, shape), count_params(dense), budget_pp, recipe.stage_slack,
                         reduction, started)

    def on_step(rec) -> None:
        if rec.stage not in ("dense", "finetune"):  # the dense record is the same for every trial
            tune.report({**progress.step(rec), **node})

    t0 = time.perf_counter()
    result = (compress_fn or compress)(dense, data, recipe, on_step=on_step, dense_val_acc=dense_val_acc)
    metrics = {**progress.finish(result.steps[-1], time.perf_counter() - t0), **node}
    with tempfile.TemporaryDirectory() as tmp:
        save_bundle(result.model.cpu(), Path(tmp) / "model", input_shape=shape, recipe=recipe.to_dict(),
                    metadata={"search_trial": {k: v for k, v in metrics.items() if k not in ("trial_started_at", "node_id")}})
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


class TrialLines(Callback):
    """One console line (stderr) per trial as it ends: what it reached and how it ended."""

    def __init__(self, num_samples: int, metric: str):
        self.num_samples, self.metric, self.ended = num_samples, metric, 0

    def _line(self, trial, how: str) -> None:
        import sys

        self.ended += 1
        r = trial.last_result or {}
        figures = (f"val {r['val_acc']:.2f}%  {r.get(self.metric, 0):.2f}x {self.metric.split('_')[0]}  "
                   f"after {r.get('training_iteration', 0)} reports" if "val_acc" in r else "no result")
        print(f"[trial {self.ended}/{self.num_samples}] {trial.trial_id} {how:<13} {figures}", file=sys.stderr,
              flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        r = trial.last_result or {}
        self._line(trial, ("complete" + ("" if r.get("feasible") else " (over budget)")) if r.get("final")
                   else "stopped early")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, "FAILED")


class SparingASHA(ASHAScheduler):
    """ASHA that never stops the default recipe's trial: it is the baseline a search must not end below, so
    it always runs to its final model (its results still set the rungs the other trials are cut at)."""

    def __init__(self, *, spared: dict, **kwargs):
        super().__init__(**kwargs)
        self.spared = spared

    def on_trial_result(self, tune_controller, trial, result):
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and {p: trial.config.get(p) for p in self.spared} == self.spared:
            self._num_stopped -= 1
            return TrialScheduler.CONTINUE
        return action

