"""The jobs of a comparison: what one (method, point, seed) run is, its recipe, the dense model it starts
from, and running it with its result cached under the work folder (``benchmarks.compare`` drives them)."""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from benchmarks.methods import CONTROL, METHODS
from benchmarks.presets import PRESETS, Preset
from idap.atomic import write_text
from idap.bundle import load_bundle, save_bundle
from idap.cli import log
from idap.data import DataSplits
from idap.measure.metrics import accuracy, cpu_name
from idap.models import create_model
from idap.prune.compress import compress
from idap.prune.config import Recipe
from idap.prune.recovery import recover, train
from idap.prune.state import LANDING_TOLERANCE, SEED_FINAL, StepRecord
from idap.report import evaluate_model

BUDGET_FAMILIES = ("idap", "torch-pruning", "ablation")  # who runs in budget mode (ablations: at ablation targets too)
# Bump when the way a job is run changes, so that cached results of the old procedure are not reused.
PROCEDURE = {"version": 3, "stage2": f"idap.prune.compress: blocks within target x {1 + LANDING_TOLERANCE}, stage 1 tops up"}


@dataclass(frozen=True)
class Job:
    """One (method, point on its axis, seed) run."""

    method: str
    seed: int
    target: float | None = None
    blocks: int | None = None
    budget: float | None = None  # budget mode: no target, this validation-accuracy budget (pp)

    @property
    def point(self) -> str:
        if self.budget is not None:
            return f"{self.budget:g}pp budget"
        if self.target is not None:
            return f"{self.target:g}x"
        return f"{self.blocks} blocks" if self.blocks is not None else "-"

    @property
    def key(self) -> str:
        parts = [self.method, self.point.replace(" ", "")] if self.point != "-" else [self.method]
        return "/".join([*parts, f"seed{self.seed}"])


def plan_jobs(preset: Preset) -> list[Job]:
    """Every run of the preset, seed by seed, so a stopped run already holds complete seeds."""
    names = list(preset.methods) + ([CONTROL] if CONTROL not in preset.methods else [])
    ablation_targets = [t for t in preset.targets if t in preset.ablation_targets] or list(preset.targets)
    # budget mode runs the contenders, not the ablations (they are decided at equal MACs)
    jobs = []
    for seed in preset.seeds:
        for name in names:
            m = METHODS[name]
            if m.axis == "control":
                jobs.append(Job(name, seed))
            elif m.axis == "blocks":
                jobs += [Job(name, seed, blocks=n) for n in preset.block_counts]
            else:
                targets = ablation_targets if m.family == "ablation" else preset.targets
                if preset.budget_pp is not None and m.family in BUDGET_FAMILIES:
                    jobs.append(Job(name, seed, budget=preset.budget_pp))
                jobs += [Job(name, seed, target=t) for t in targets]
    return jobs


def base_recipe(preset: Preset, seed: int, device: str) -> Recipe:
    """What every method shares; the accuracy budget is off (100 pp) so every method reaches its target."""
    return Recipe.from_dict({
        "seed": seed, "max_accuracy_drop": 100.0, "calibration_size": preset.calibration_size,
        "validation_size": preset.validation_size, "eval_batch_size": preset.eval_batch, "device": device,
        # IDAP++ as benchmarked: ranked per MAC, the dense model as per-step teacher (they won or tied on the
        # ResNets); the library keeps the spec's choices as defaults, ablated as idap++-score-ranking and
        # idap++-previous-teacher. Torch-Pruning's criteria set their own ranking.
        "filter": {"p0": preset.p0, "steps": preset.filter_steps, "alpha": preset.alpha, "ranking": "score_per_mac"},
        "layer": {"target_share": preset.target_share, "epsilon": 100.0, "max_removals": preset.max_blocks},
        "recovery": {"step_budget": preset.step_budget, "final_budget": preset.total_budget,
                     "batch_size": preset.batch_size, "teacher": "dense"},
    }).with_overrides(list(preset.recipe_overrides))  # fmt: skip


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, default=str))


def input_shape(data: DataSplits) -> tuple[int, int, int]:
    return (data.in_channels, data.image_size, data.image_size)


# ---- the dense model -------------------------------------------------------------------------------
def runs_dir(work: Path, preset: Preset) -> Path:
    """Where the preset's runs are cached: ``work/<preset>``, or ``work/<preset>--set-<digest>`` when ``--set``
    added recipe overrides, so a variant never overwrites the cached runs of the preset itself (or of another
    variant; the cache key inside still guards against any other change)."""
    default = PRESETS[preset.name].recipe_overrides if preset.name in PRESETS else ()
    extra = preset.recipe_overrides[len(default):] if preset.recipe_overrides[:len(default)] == default else (
        preset.recipe_overrides)
    name = preset.shares_runs_with or preset.name  # an ablation preset reuses its main preset's cached runs
    return work / (f"{name}--set-{digest(list(extra))}" if extra else name)


def dense_settings(preset: Preset) -> dict:
    keys = ("dataset", "model", "train_epochs", "train_lr", "train_batch", "train_limit", "test_limit", "data_seed",
            "calibration_size", "validation_size", *(("init_weights",) if preset.init_weights else ()))
    return {k: getattr(preset, k) for k in keys}


def pretrained(preset: Preset, data: DataSplits, directory: Path) -> nn.Module:
    """The preset's architecture with its pretrained weights (``init_weights``: ``module:function`` returning a
    state dict's path), the head replaced for the task's classes, through ``idap import``."""
    from idap.dense.importing import import_model

    module, _, function = preset.init_weights.partition(":")
    weights = getattr(importlib.import_module(module), function)()
    import_model(preset.model, weights, directory / "pretrained", num_classes=data.num_classes,
                 in_channels=data.in_channels, image_size=data.image_size, mean=None, std=None, scale=None)
    return load_bundle(directory / "pretrained", trust_modules=[preset.model.partition(":")[0]])


def dense_model(preset: Preset, data: DataSplits, work: Path, device: torch.device) -> tuple[nn.Module, dict]:
    """The trained dense model, from the cache when its settings match, else trained now and cached."""
    settings = dense_settings(preset)
    directory = work / "dense" / f"{preset.model}-{digest(settings)}"
    info = read_json(directory / "dense.json")
    if info is not None and (directory / "model").is_dir():
        log(f"dense {preset.model}: cached in {directory} (test {info['test_acc']:.2f}%)")
        return load_bundle(directory / "model"), info
    steps_per_epoch = -(-len(data.train_x) // preset.train_batch)
    log(f"dense {preset.model}: training {preset.train_epochs} epochs x {steps_per_epoch} steps on "
        f"{len(data.train_x)} samples")
    torch.manual_seed(preset.data_seed)
    model = (pretrained(preset, data, directory) if preset.init_weights else
             create_model(preset.model, data.num_classes, data.in_channels, data.image_size))
    started = time.perf_counter()

    curve: list[float] = []  # validation accuracy after each epoch: the page shows whether it plateaued

    def on_epoch(epoch: int) -> None:
        spent = time.perf_counter() - started
        if preset.val_curve:
            curve.append(round(accuracy(model, data.val_x, data.val_y, batch_size=preset.eval_batch, device=device), 2))
        log(f"  dense epoch {epoch}/{preset.train_epochs}: {spent:.0f}s (~{spent / epoch * (preset.train_epochs - epoch):.0f}s "
            f"left)" + (f", val {curve[-1]:.2f}%" if curve else ""))

    train(model, data.train_x, data.train_y, epochs=preset.train_epochs, batch_size=preset.train_batch,
          lr=preset.train_lr, seed=preset.data_seed, device=device, on_epoch=on_epoch)
    seconds = time.perf_counter() - started
    info = {**evaluate_model(model, data, batch_size=preset.eval_batch, device=device), "settings": settings,
            "train_steps": round(preset.train_epochs * steps_per_epoch), "train_seconds": round(seconds, 1),
            "trained_on": where(device),
            "digest": digest(settings), **({"val_curve": curve, "plateau": plateau(curve)} if curve else {})}
    model = model.cpu().eval()
    save_bundle(model, directory / "model", input_shape=input_shape(data), recipe={"train": settings},
                metadata={"metrics": info})
    write_json(directory / "dense.json", info)
    log(f"dense {preset.model}: val {info['val_acc']:.2f}% test {info['test_acc']:.2f}% in {seconds:.0f}s")
    return model, info


def plateau(curve: list[float], epochs: int = 3, within_pp: float = 0.3) -> dict:
    """Did validation stop moving: the range of the last ``epochs`` epochs' accuracies against ``within_pp``."""
    last = curve[-epochs:]
    moved = max(last) - min(last) if len(last) == epochs else None
    return {"last_epochs": epochs, "moved_pp": moved, "within_pp": within_pp,
            "reached": moved is not None and moved < within_pp}


# ---- one run -----------------------------------------------------------------------------------------
def compress_equal_budget(dense: nn.Module, data: DataSplits, recipe: Recipe, total_budget: int, *,
                          dense_val_acc: float, on_step) -> tuple[nn.Module, list[StepRecord], int, Recipe]:
    """idap.prune.compress.compress with ``recovery.total_budget``: the final fine-tune takes what recovery left.

    With a MACs target, idap's stage 2 skips blocks that would overshoot it and stage 1 tops up the gap, so
    every method is compared at the same MACs. Returns the model, its trajectory, the recovery steps spent
    before the final fine-tune, and the recipe with the final budget actually used.
    """
    recipe = recipe.with_overrides({"recovery.total_budget": total_budget})
    result = compress(dense, data, recipe, on_step=on_step, dense_val_acc=dense_val_acc)
    used = sum(rec.recovery_steps for rec in result.steps if rec.stage != "finetune")
    final_recipe = recipe.with_overrides({"recovery.final_budget": max(0, total_budget - used)})
    return result.model, result.steps, used, final_recipe


def train_control(dense: nn.Module, data: DataSplits, recipe: Recipe, total_budget: int,
                  device: torch.device) -> nn.Module:
    """The dense model trained for the methods' total budget with plain CE (same optimizer, lr, batches)."""
    model = copy.deepcopy(dense)
    recover(model, None, data.train_x, data.train_y, steps=total_budget, config=recipe.recovery,
            seed=recipe.seed + SEED_FINAL, device=device, lr=recipe.recovery.final_lr, schedule="cosine")
    return model


# Recipe fields added after benchmark runs were cached, with the value that behaves as before they existed:
# at that value, or in a disabled stage, they are left out of a run's cache key, so the cached runs (which
# could not have used them) stay valid; any other value changes the key.
ADDED_FIELDS = {("layer", "patience"): 0, ("recovery", "time_budget"): None}


def keyed_recipe(recipe) -> dict:
    """The recipe as a run's cache key sees it: no device, no added field at its earlier behaviour."""
    doc = {k: v for k, v in recipe.to_dict().items() if k != "device"}
    for (section, name), neutral in ADDED_FIELDS.items():
        part = doc.get(section, {})
        if part.get(name, neutral) == neutral or part.get("enabled") is False:
            doc[section] = {k: v for k, v in doc[section].items() if k != name}
    return doc


def run_job(job: Job, preset: Preset, *, dense: nn.Module, dense_info: dict, data: DataSplits,
            stage_data: DataSplits, dense_stage_acc: float, device: torch.device, device_name: str,
            work: Path) -> dict:
    """Run one job, or return its cached result when nothing it depends on changed."""
    method = METHODS[job.method]
    recipe = method.recipe(base_recipe(preset, job.seed, device_name), target=job.target, blocks=job.blocks,
                           budget=job.budget)
    key = digest({"recipe": keyed_recipe(recipe),
                  "dense": dense_info["digest"], "total_budget": preset.total_budget,
                  "stage_val_size": preset.stage_val_size, "method": job.method,
                  **({"procedure": PROCEDURE} if recipe.layer.enabled and recipe.filter.enabled else {})})
    directory = runs_dir(work, preset) / job.key
    cached = read_json(directory / "result.json")
    if cached is not None and cached.get("cache_key") == key and (directory / "model").is_dir():
        log(f"{job.key}: cached")
        return cached

    def on_step(rec: StepRecord) -> None:
        what = rec.removed.get("block") or sum(rec.removed.get("channels", {}).values()) or ""
        log(f"  {job.key} [{rec.stage} {rec.index}] {rec.action} MACs={rec.macs:,} "
            f"({dense_info['macs'] / max(1, rec.macs):.2f}x) val@{preset.stage_val_size}={rec.val_acc:.2f} "
            f"{what} {rec.note} ({rec.seconds:.1f}s)".rstrip())

    log(f"{job.key}: start")
    started = time.perf_counter()
    if method.axis == "control":
        model, trajectory, used = train_control(dense, data, recipe, preset.total_budget, device), [], 0
        final_recipe = recipe
        final = preset.total_budget
    else:
        model, records, used, final_recipe = compress_equal_budget(
            dense, stage_data, recipe, preset.total_budget, dense_val_acc=dense_stage_acc, on_step=on_step)
        trajectory = [r.to_json() for r in records]
        final = final_recipe.recovery.final_budget
    seconds = time.perf_counter() - started
    evaluated = time.perf_counter()
    metrics = evaluate_model(model.eval(), data, batch_size=preset.eval_batch, device=device)
    model = model.cpu().eval()
    removed = [n for n, m in model.named_modules() if isinstance(m, nn.Identity)
               and not isinstance(dict(dense.named_modules()).get(n), nn.Identity)]
    result = {
        "key": job.key, "method": job.method, "axis": method.axis, "target": job.target, "blocks": job.blocks,
        "budget": job.budget,
        "seed": job.seed, **metrics,
        "macs_reduction": dense_info["macs"] / max(1, metrics["macs"]),
        "params_reduction": dense_info["params"] / max(1, metrics["params"]),
        "reached_target": None if job.target is None else dense_info["macs"] / max(1, metrics["macs"]) >= job.target,
        "blocks_removed": removed, "recovery_steps": used, "finetune_steps": final, "total_steps": used + final,
        "compress_seconds": round(seconds, 1), "eval_seconds": round(time.perf_counter() - evaluated, 1),
        "compressed_on": where(device),
        "trajectory": trajectory, "recipe": final_recipe.to_dict(), "cache_key": key,
    }
    save_bundle(model, directory / "model", input_shape=input_shape(data), recipe=final_recipe.to_dict(),
                metadata={"benchmark": {k: v for k, v in result.items() if k not in ("trajectory", "recipe")}})
    write_json(directory / "result.json", result)
    log(f"{job.key}: test {metrics['test_acc']:.2f}% val {metrics['val_acc']:.2f}% at "
        f"{result['macs_reduction']:.2f}x fewer MACs, {used}+{final} steps, {seconds:.0f}s")
    return result


def where(device: torch.device) -> str:
    """One line naming the hardware a job ran on (results may be computed on one machine and timed on another)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return f"{name}, host {cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}"
