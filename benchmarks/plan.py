"""Before and around a comparison: the plan (optimizer steps, an estimated wall time) and the machine facts
its results name."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.jobs import Job
from benchmarks.presets import Preset
from idap.cli import log
from idap.data import DataSplits
from idap.measure.metrics import cpu_name
from idap.models import create_model

ROOT = Path(__file__).resolve().parents[1]
# For the time estimate: a distillation step on a pruned model plus the teacher's forward pass, relative to
# a dense training step (ResNet-20, 1 thread; the report compares the estimate with the measured time).
RECOVERY_STEP_COST = 0.9
STAGE_EVALS_PER_JOB = 8  # pruning steps a job typically takes (scoring + in-stage evaluation each)


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
             f"  {plan['jobs']} jobs ({plan['jobs_cached']} with a result on disk, reused if their recipe is unchanged), each {preset.total_budget} optimizer steps "
             f"(recovery {preset.step_budget}/pruning step + final fine-tune), batch {preset.batch_size}",
             f"  methods: {', '.join(dict.fromkeys(j.method for j in jobs))}",
             f"  MACs targets {list(preset.targets)}, block counts {list(preset.block_counts)}, seeds {list(preset.seeds)}",
             f"  dense training: {plan['dense_training_steps_to_run']} steps to run; "
             f"{plan['optimizer_steps_to_run']} compression steps to run",
             f"  measured {plan['probe_seconds_per_dense_step']:.3f} s per dense step now -> estimated "
             f"{est['dense_training'] / 60:.0f} min dense + {est['compression'] / 60:.0f} min compression + "
             f"{est['speed'] / 60:.1f} min timing = {est['total'] / 60:.0f} min"]
    log("\n".join(lines))


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
