"""Peer comparison: IDAP++ vs Torch-Pruning's criteria vs ShortGPT block influence, at equal MACs and budgets.

Every method starts from the same trained dense model (cached in ``benchmarks/work``), runs the same
schedule, and spends the same total number of optimizer steps on recovery + final fine-tune; the dense
model trained with plain cross-entropy for that many extra steps is the control. All final models are
timed together at the end (interleaved, medians, same thread count). Each (method, target, seed) result is
cached, so an interrupted run resumes where it stopped.

Usage:
    python -m benchmarks.compare --preset fashion-resnet20 --plan    # jobs, optimizer steps, estimated time
    python -m benchmarks.compare --preset fashion-resnet20           # -> benchmarks/results/<preset>.{json,md,png}
    python -m benchmarks.compare --smoke                             # digits miniature of everything (CI)
    python -m benchmarks.compare --preset fashion-resnet20 --methods idap++,tp-l1 --targets 3 --seeds 0
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.methods import CONTROL, METHODS
from benchmarks.presets import PRESETS, SMOKE, Preset, get_preset
from benchmarks.summarize import write_results
from idap.bundle import load_bundle, save_bundle
from idap.compress import compress
from idap.config import Recipe
from idap.data import DataSplits, load_dataset
from idap.metrics import accuracy, cpu_name, resolve_device
from idap.models import create_model
from idap.recovery import recover, train
from idap.report import evaluate_model
from idap.speed import measure_speed
from idap.state import LANDING_TOLERANCE, SEED_FINAL, StepRecord

ROOT = Path(__file__).resolve().parents[1]
# For the time estimate: a distillation step on a pruned model plus the teacher's forward pass, relative to
# a dense training step (ResNet-20, 1 thread; the report compares the estimate with the measured time).
RECOVERY_STEP_COST = 0.9
STAGE_EVALS_PER_JOB = 8  # pruning steps a job typically takes (scoring + in-stage evaluation each)
# Bump when the way a job is run changes, so that cached results of the old procedure are not reused.
PROCEDURE = {"version": 3, "stage2": f"idap.compress: blocks within target x {1 + LANDING_TOLERANCE}, stage 1 tops up"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Job:
    """One (method, point on its axis, seed) run."""

    method: str
    seed: int
    target: float | None = None
    blocks: int | None = None

    @property
    def point(self) -> str:
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def input_shape(data: DataSplits) -> tuple[int, int, int]:
    return (data.in_channels, data.image_size, data.image_size)


# ---- the dense model -------------------------------------------------------------------------------
def dense_settings(preset: Preset) -> dict:
    return {k: getattr(preset, k) for k in ("dataset", "model", "train_epochs", "train_lr", "train_batch",
                                            "train_limit", "test_limit", "data_seed", "calibration_size",
                                            "validation_size")}


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
    model = create_model(preset.model, data.num_classes, data.in_channels, data.image_size)
    started = time.perf_counter()

    def on_epoch(epoch: int) -> None:
        spent = time.perf_counter() - started
        log(f"  dense epoch {epoch}/{preset.train_epochs}: {spent:.0f}s "
            f"(~{spent / epoch * (preset.train_epochs - epoch):.0f}s left)")

    train(model, data.train_x, data.train_y, epochs=preset.train_epochs, batch_size=preset.train_batch,
          lr=preset.train_lr, seed=preset.data_seed, device=device, on_epoch=on_epoch)
    seconds = time.perf_counter() - started
    info = {**evaluate_model(model, data, batch_size=preset.eval_batch, device=device), "settings": settings,
            "train_steps": round(preset.train_epochs * steps_per_epoch), "train_seconds": round(seconds, 1),
            "trained_on": where(device),
            "digest": digest(settings)}
    model = model.cpu().eval()
    save_bundle(model, directory / "model", input_shape=input_shape(data), recipe={"train": settings},
                metadata={"metrics": info})
    write_json(directory / "dense.json", info)
    log(f"dense {preset.model}: val {info['val_acc']:.2f}% test {info['test_acc']:.2f}% in {seconds:.0f}s")
    return model, info


# ---- one run -----------------------------------------------------------------------------------------
def compress_equal_budget(dense: nn.Module, data: DataSplits, recipe: Recipe, total_budget: int, *,
                          dense_val_acc: float, on_step) -> tuple[nn.Module, list[StepRecord], int, Recipe]:
    """idap.compress.compress with ``recovery.total_budget``: the final fine-tune takes what recovery left.

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


def run_job(job: Job, preset: Preset, *, dense: nn.Module, dense_info: dict, data: DataSplits,
            stage_data: DataSplits, dense_stage_acc: float, device: torch.device, device_name: str,
            work: Path) -> dict:
    """Run one job, or return its cached result when nothing it depends on changed."""
    method = METHODS[job.method]
    recipe = method.recipe(base_recipe(preset, job.seed, device_name), target=job.target, blocks=job.blocks)
    key = digest({"recipe": {k: v for k, v in recipe.to_dict().items() if k != "device"},
                  "dense": dense_info["digest"], "total_budget": preset.total_budget,
                  "stage_val_size": preset.stage_val_size, "method": job.method,
                  **({"procedure": PROCEDURE} if recipe.layer.enabled and recipe.filter.enabled else {})})
    directory = work / preset.name / job.key
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


# ---- plan and machine --------------------------------------------------------------------------------
def probe_step_seconds(preset: Preset, data: DataSplits, device: torch.device) -> float:
    """Seconds of one dense training step at the recovery batch size on this machine, now."""
    model = create_model(preset.model, data.num_classes, data.in_channels, data.image_size).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = data.train_x[:preset.batch_size].to(device), data.train_y[:preset.batch_size].to(device)
    times = []
    for _ in range(6):
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.fmean(times[1:])  # the mean: on a shared machine the slow steps are part of the cost


def make_plan(preset: Preset, jobs: list[Job], data: DataSplits, step_seconds: float, *, dense_cached: bool,
              done: set[str]) -> dict:
    """Optimizer steps and an estimated wall time, for the jobs still to run."""
    fwd_sample = step_seconds / 3 / preset.batch_size
    eval_samples = len(data.val_x) + len(data.test_x)
    overhead = fwd_sample * (eval_samples + STAGE_EVALS_PER_JOB * (preset.stage_val_size + preset.calibration_size))
    todo = [j for j in jobs if j.key not in done]
    dense_steps = 0 if dense_cached else round(preset.train_epochs * -(-len(data.train_x) // preset.train_batch))
    job_seconds = preset.total_budget * step_seconds * RECOVERY_STEP_COST + overhead
    # measure_speed: per model and round, warm-up + repeats at batch 1 (at least ~1 ms each) and at batch 64
    batch1 = (10 + preset.speed_repeats) * max(1e-3, fwd_sample)
    batch64 = (3 + max(5, preset.speed_repeats // 3)) * 64 * fwd_sample
    speed_seconds = (len(jobs) + 1) * preset.speed_rounds * (batch1 + batch64)
    total = dense_steps * step_seconds + len(todo) * job_seconds + speed_seconds
    return {
        "jobs": len(jobs), "jobs_to_run": len(todo), "jobs_cached": len(jobs) - len(todo),
        "optimizer_steps_per_job": preset.total_budget, "optimizer_steps_to_run": preset.total_budget * len(todo),
        "dense_training_steps_to_run": dense_steps, "probe_seconds_per_dense_step": round(step_seconds, 3),
        "estimated_seconds": {"dense_training": round(dense_steps * step_seconds),
                              "compression": round(len(todo) * job_seconds), "speed": round(speed_seconds),
                              "total": round(total)},
    }


def print_plan(preset: Preset, jobs: list[Job], plan: dict) -> None:
    est = plan["estimated_seconds"]
    lines = [f"plan for {preset.name}: {preset.note}",
             f"  {plan['jobs']} jobs ({plan['jobs_cached']} cached), each {preset.total_budget} optimizer steps "
             f"(recovery {preset.step_budget}/pruning step + final fine-tune), batch {preset.batch_size}",
             f"  methods: {', '.join(dict.fromkeys(j.method for j in jobs))}",
             f"  MACs targets {list(preset.targets)}, block counts {list(preset.block_counts)}, seeds {list(preset.seeds)}",
             f"  dense training: {plan['dense_training_steps_to_run']} steps to run; "
             f"{plan['optimizer_steps_to_run']} compression steps to run",
             f"  measured {plan['probe_seconds_per_dense_step']:.3f} s per dense step now -> estimated "
             f"{est['dense_training'] / 60:.0f} min dense + {est['compression'] / 60:.0f} min compression + "
             f"{est['speed'] / 60:.1f} min timing = {est['total'] / 60:.0f} min"]
    log("\n".join(lines))


def where(device: torch.device) -> str:
    """One line naming the hardware a job ran on (results may be computed on one machine and timed on another)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return f"{name}, host {cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}"


def machine_info(device: torch.device) -> dict:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    dirty = git("status", "--porcelain", "--", "idap", "benchmarks")
    return {
        "cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "torch_pruning": metadata.version("torch-pruning"), "python": platform.python_version(),
        "platform": platform.platform(), "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(dirty) if dirty is not None else None,
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


# ---- parallel workers ----------------------------------------------------------------------------------
CLAIM = ".claim"


def claim(directory: Path) -> bool:
    """Take a job for this worker process; False when another worker holds it (atomic: O_EXCL)."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(directory / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


def run_workers(preset: Preset, work: Path, worker_argv: list[str], workers: int) -> int:
    """Run the preset's jobs in ``workers`` processes that claim jobs one at a time; the number that failed.

    For a machine with many cores or a GPU: each worker trains on the same device with its own torch
    threads. Stale claims of an interrupted run are cleared first (only one parent runs per work folder).
    """
    for stale in (work / preset.name).rglob(CLAIM):
        stale.unlink(missing_ok=True)
    log(f"starting {workers} worker processes")
    procs = [subprocess.Popen(worker_argv) for _ in range(workers)]
    try:
        codes = [p.wait() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return sum(1 for c in codes if c != 0)


def run_worker_jobs(jobs: list[Job], preset: Preset, work: Path, **kwargs) -> int:
    """A worker: run every unclaimed job, keep going past a failed one; the number of failed jobs."""
    failed = 0
    for job in jobs:
        directory = work / preset.name / job.key
        if not claim(directory):
            continue
        try:
            run_job(job, preset, work=work, **kwargs)
        except Exception:  # noqa: BLE001 - reported, counted, and the exit code says so
            failed += 1
            log(f"{job.key}: FAILED\n{traceback.format_exc()}")
        finally:
            (directory / CLAIM).unlink(missing_ok=True)
    return failed


# ---- the whole comparison --------------------------------------------------------------------------
def run_comparison(preset: Preset, *, out: Path, work: Path, stem: str, device_name: str, threads: int,
                   plan_only: bool = False, command: str = "", skip_speed: bool = False, workers: int = 1,
                   worker: bool = False, worker_argv: list[str] | None = None) -> dict | None:
    """Run (or resume) every job of the preset, time the final models, write the results.

    ``workers > 1`` trains the dense model here, then runs the jobs in that many processes before timing
    them here; ``worker`` is such a process. ``skip_speed`` stops after the jobs (timing on another machine
    later: a rerun finds every job cached and only times).
    """
    torch.set_num_threads(threads)
    device = resolve_device(device_name)
    started = time.perf_counter()
    data = load_dataset(preset.dataset, seed=preset.data_seed, calibration_size=preset.calibration_size,
                        validation_size=preset.validation_size, train_limit=preset.train_limit,
                        test_limit=preset.test_limit)
    jobs = plan_jobs(preset)
    dense_dir = work / "dense" / f"{preset.model}-{digest(dense_settings(preset))}"
    done = {j.key for j in jobs if (work / preset.name / j.key / "result.json").is_file()}
    plan = {} if worker else make_plan(preset, jobs, data, probe_step_seconds(preset, data, device),
                                       dense_cached=(dense_dir / "dense.json").is_file(), done=done)
    if not worker:
        print_plan(preset, jobs, plan)
    if plan_only:
        return None
    dense, dense_info = dense_model(preset, data, work, device)
    n = preset.stage_val_size
    stage_data = replace(data, val_x=data.val_x[:n], val_y=data.val_y[:n])
    dense = dense.to(device).eval()
    dense_stage_acc = accuracy(dense, stage_data.val_x, stage_data.val_y, batch_size=preset.eval_batch)
    shared = {"dense": dense, "dense_info": dense_info, "data": data, "stage_data": stage_data,
              "dense_stage_acc": dense_stage_acc, "device": device, "device_name": device_name}
    if worker:
        failed = run_worker_jobs(jobs, preset, work, **shared)
        if failed:
            raise SystemExit(f"worker {os.getpid()}: {failed} job(s) failed (tracebacks above)")
        return None
    if workers > 1:
        failed = run_workers(preset, work, worker_argv or [], workers)
        if failed:
            raise SystemExit(f"{failed} of {workers} workers reported failed jobs (tracebacks above); "
                             "the jobs that finished are cached, a rerun resumes")
    machine = machine_info(device)
    header = {"preset": asdict(preset), "stem": stem, "command": command, "plan": plan, "machine": machine,
              "procedure": PROCEDURE,
              "dense": dense_info, "stage_val_acc_dense": dense_stage_acc}
    results = []
    for i, job in enumerate(jobs, 1):
        t0 = time.perf_counter()
        results.append(run_job(job, preset, work=work, **shared))
        spent = time.perf_counter() - started
        log(f"job {i}/{len(jobs)} in {time.perf_counter() - t0:.0f}s; {spent / 60:.1f} min so far")
        write_results({**header, "status": f"partial: {i}/{len(jobs)} jobs, speed not measured yet",
                       "runs": results}, out, stem, plot=False)
    if skip_speed:
        log(f"all {len(jobs)} jobs done; timing skipped (--skip-speed): rerun without it to time them")
        return None
    log(f"timing {len(results) + 1} models interleaved ({preset.speed_rounds} rounds, {threads} threads)...")
    # Every timed model comes from its bundle, the dense one too: the same kind of object, freshly loaded
    # (once, a dense model that had served all run long timed 2x slower than its identical control).
    models = {"dense": load_bundle(dense_dir / "model")}
    models.update({r["key"]: load_bundle(work / preset.name / r["key"] / "model") for r in results})
    load_before = [round(v, 2) for v in os.getloadavg()]
    # A discarded pass first: whichever model is timed first would otherwise also pay for cold caches.
    measure_speed(models, input_shape(data), rounds=1, repeats=max(3, preset.speed_repeats // 5))
    speed = measure_speed(models, input_shape(data), rounds=preset.speed_rounds, repeats=preset.speed_repeats)
    machine["load_average_during_timing"] = [load_before, [round(v, 2) for v in os.getloadavg()]]
    dense_info = {**dense_info, **speed["dense"]}
    for r in results:
        r.update(speed[r["key"]])
        r["speedup_b1"] = dense_info["latency_ms_b1"] / r["latency_ms_b1"]
        r["throughput_gain_b64"] = r["throughput_b64"] / dense_info["throughput_b64"]
    payload = {**header, "dense": dense_info, "status": "complete", "runs": results,
               "wall_seconds": round(time.perf_counter() - started, 1)}
    paths = write_results(payload, out, stem, plot=True)
    log(f"done in {payload['wall_seconds'] / 60:.1f} min: " + ", ".join(str(p) for p in paths.values()))
    return payload


def parse_list(text: str | None, kind):
    return None if text is None else [kind(v) for v in text.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="fashion-resnet20", choices=list(PRESETS))
    p.add_argument("--smoke", action="store_true", help=f"run the {SMOKE} preset (every method, < 2 min)")
    p.add_argument("--methods", help=f"comma list of {list(METHODS)} (default: the preset's)")
    p.add_argument("--targets", help="comma list of MACs reduction factors, e.g. 2,3,4")
    p.add_argument("--blocks", help="comma list of block counts for the depth comparison, e.g. 2,4")
    p.add_argument("--seeds", help="comma list of recipe seeds, e.g. 0,1")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe setting "
                   "for every method, e.g. recovery.final_reserve=0.5 (repeatable; names the results)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="where <name>.{json,md,png} go")
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "work"), help="cache of dense model and runs")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"), help="where training runs "
                   "(timings are always CPU)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training and timing (1 = steady "
                   "on a shared machine; recorded in the results)")
    p.add_argument("--plan", action="store_true", help="print the plan and the estimated time, run nothing")
    p.add_argument("--workers", type=int, default=1, help="run the jobs in N processes (a many-core or GPU "
                   "machine); the dense model is trained first, the timing runs after all of them")
    p.add_argument("--skip-speed", action="store_true", help="stop after the jobs, time nothing (to time on "
                   "another machine: copy the work folder there and rerun without it)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one of --workers' processes
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    base = get_preset(SMOKE if args.smoke else args.preset)
    try:
        preset = base.select(methods=parse_list(args.methods, str), targets=parse_list(args.targets, float),
                             seeds=parse_list(args.seeds, int), block_counts=parse_list(args.blocks, int))
        if args.set:
            preset = replace(preset, recipe_overrides=(*preset.recipe_overrides, *args.set))
            base_recipe(preset, 0, "cpu")  # a bad key or value fails here, naming it
    except ValueError as exc:
        log(f"error: {exc}")
        return 2
    changed = [f"{k}-{'_'.join(f'{v:g}' if isinstance(v, float) else str(v) for v in getattr(preset, k))}"
               for k in ("targets", "block_counts", "seeds") if getattr(preset, k) != getattr(base, k)]
    if preset.methods != base.methods:
        changed.append(f"methods-{len(preset.methods)}")
    changed += [o.replace("=", "-") for o in args.set]
    stem = "--".join([preset.name, *changed])
    command = "python -m benchmarks.compare " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.workers < 1:
        log(f"error: --workers must be >= 1, got {args.workers}")
        return 2
    worker_argv = [sys.executable, "-m", "benchmarks.compare", "--worker", "--preset", base.name,
                   "--work", args.work, "--out", args.out, "--device", args.device, "--threads", str(args.threads)]
    for flag in ("methods", "targets", "blocks", "seeds"):
        if getattr(args, flag) is not None:
            worker_argv += [f"--{flag}", getattr(args, flag)]
    for override in args.set:
        worker_argv += ["--set", override]
    run_comparison(preset, out=Path(args.out), work=Path(args.work), stem=stem, device_name=args.device,
                   threads=args.threads, plan_only=args.plan, command=command.strip(), skip_speed=args.skip_speed,
                   workers=args.workers, worker=args.worker, worker_argv=worker_argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
