"""What the ``idap`` commands share: console output, the data and recipe flags, loading the data they name."""


from __future__ import annotations

import argparse
import sys
import time

from idap.bundle.format import BundleError
from idap.data.sources import list_datasets, load_dataset
from idap.data.splits import DataError
from idap.models.registry import ModelError
from idap.prune.config import ConfigError, Recipe
from idap.prune.state import StepRecord
from idap.prune.surgery import SurgeryError
from idap.prune.timing import RunPlan, format_duration

USER_ERRORS = (ConfigError, DataError, ModelError, BundleError, SurgeryError, FileNotFoundError, ValueError)
# what marks a directory as an earlier idap output that a new run may replace whole
_OUTPUT_MARKERS = ("report.json", "model", "architecture.json", "metrics.json")


def log(msg: str) -> None:
    # one write of the whole line: processes sharing a stderr pipe (benchmark workers) never split each other's lines
    sys.stderr.write(f"{msg}\n")
    sys.stderr.flush()


def print_step(step: StepRecord, progress: str = "") -> None:
    """Default progress line for a trajectory step (``progress``: the whole run's, see :class:`RunPrinter`)."""
    what = step.removed.get("block") or ", ".join(
        f"{sum(v.values())} {k}" for k, v in step.removed.items() if isinstance(v, dict) and v) or ""
    log(f"[{step.stage} {step.index}] {step.action:<12} params={step.params:,} MACs={step.macs:,} "
        f"val={step.val_acc:.2f}% {what} {step.note} ({step.seconds:.1f}s)".rstrip() + (f" | {progress}" if progress else ""))


class RunPrinter:
    """The console of a compression run: the plan line before the first pruning step, then one line per step
    ending with where the whole run stands — MACs reached against the target, the accuracy drop against the
    budget, elapsed and remaining time."""

    def __init__(self, recipe: Recipe, clock=time.perf_counter):
        self.recipe, self.clock = recipe, clock
        self.plan: RunPlan | None = None
        self.dense: StepRecord | None = None
        self.started = clock()

    def on_plan(self, plan: RunPlan) -> None:
        self.plan, self.started = plan, self.clock() - plan.spent_s
        log(plan.line())

    def on_step(self, step: StepRecord) -> None:
        if step.action == "dense":
            self.dense = step
        print_step(step, self.progress(step))

    def progress(self, step: StepRecord) -> str:
        if self.dense is None or step.action == "dense":
            return ""
        r, d = self.recipe, self.dense
        target = f"/{r.target_macs_reduction:g}x" if r.target_macs_reduction else "x"
        text = (f"{d.macs / max(1, step.macs):.2f}{target} MACs, drop {d.val_acc - step.val_acc:.2f}/"
                f"{r.stage_budget:g} pp")
        if self.plan is not None:
            elapsed = self.clock() - self.started
            end = self.plan.time_budget if self.plan.time_budget is not None else self.plan.estimate_s
            text += f", {format_duration(elapsed)} elapsed, ~{format_duration(max(0.0, end - elapsed))} left"
        return text


# ---- arguments ---------------------------------------------------------------------------------
def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help=f"one of {list_datasets()}, an ImageFolder dir or an .npz file")
    p.add_argument("--data-root", default=None, help="where datasets live (default: $IDAP_DATA_ROOT or ./data)")
    p.add_argument("--train-limit", type=int, default=None, help="subsample the training split (quick runs)")
    p.add_argument("--test-limit", type=int, default=None, help="subsample the test split (quick runs)")


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default=None, help="YAML recipe (see recipes/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a recipe field, e.g. --set filter.steps=10 (repeatable)")
    p.add_argument("--max-accuracy-drop", type=float, default=None, help="budget Δ in percentage points")
    p.add_argument("--target-macs-reduction", type=float, default=None, help="e.g. 2 = stop at 2x fewer MACs")
    p.add_argument("--target-params-reduction", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    p.add_argument("--time-budget", default=None, metavar="DURATION",
                   help="wall time for the compression, e.g. 20m or 1h (recovery.time_budget): the step times are "
                        "measured first and the recovery budgets sized to fit")


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    recipe = Recipe.from_yaml(args.recipe) if args.recipe else Recipe()
    flags = {"max_accuracy_drop": args.max_accuracy_drop, "target_macs_reduction": args.target_macs_reduction,
             "target_params_reduction": args.target_params_reduction, "seed": args.seed, "device": args.device,
             "recovery.time_budget": getattr(args, "time_budget", None)}
    overrides = {k: v for k, v in flags.items() if v is not None}
    if overrides:
        recipe = recipe.with_overrides(overrides)
    return recipe.with_overrides(args.overrides) if args.overrides else recipe


def load_data_for(args: argparse.Namespace, recipe: Recipe | None = None, seed: int = 0):
    return load_data(args.dataset, root=args.data_root, train_limit=args.train_limit, test_limit=args.test_limit,
                     recipe=recipe, seed=seed, tokenizer=getattr(args, "model_dir", None))


def load_data(dataset: str, *, root: str | None = None, train_limit: int | None = None,
              test_limit: int | None = None, recipe: Recipe | None = None, seed: int = 0, tokenizer=None):
    """The dataset split as ``recipe`` asks (its seed, calibration and validation sizes), else with ``seed``.

    ``tokenizer``: the bundle being compressed or evaluated; a text folder is tokenized with its tokenizer."""
    kw = {}
    if recipe is not None:
        kw = {"calibration_size": recipe.calibration_size, "validation_size": recipe.validation_size}
        seed = recipe.seed
    return load_dataset(dataset, root=root, seed=seed, train_limit=train_limit, test_limit=test_limit,
                        tokenizer=tokenizer, **kw)
