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
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from benchmarks.jobs import (
    PROCEDURE,
    base_recipe,
    dense_model,
    dense_settings,
    digest,
    input_shape,
    plan_jobs,
    run_job,
    runs_dir,
)
from benchmarks.methods import METHODS
from benchmarks.plan import ROOT, machine_info, make_plan, print_plan, probe_step_seconds
from benchmarks.presets import PRESETS, SMOKE, Preset, get_preset
from benchmarks.summarize import write_results
from benchmarks.workers import run_worker_jobs, run_workers
from idap.bundle import load_bundle
from idap.bundle.format import BundleError
from idap.bundle.onnx_export import export_onnx
from idap.cli import log
from idap.data import load_dataset
from idap.measure.metrics import accuracy, resolve_device
from idap.measure.speed import measure_speed

__all__ = ["build_parser", "main", "run_comparison"]


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
    done = {j.key for j in jobs if (runs_dir(work, preset) / j.key / "result.json").is_file()}
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
    models.update({r["key"]: load_bundle(runs_dir(work, preset) / r["key"] / "model") for r in results})
    load_before = [round(v, 2) for v in os.getloadavg()]
    # A discarded pass first: whichever model is timed first would otherwise also pay for cold caches.
    onnx = onnx_exports(models, {"dense": dense_dir, **{r["key"]: runs_dir(work, preset) / r["key"] for r in results}},
                        input_shape(data))
    measure_speed(models, input_shape(data), rounds=1, repeats=max(3, preset.speed_repeats // 5))
    speed = measure_speed(models, input_shape(data), rounds=preset.speed_rounds, repeats=preset.speed_repeats,
                          onnx=onnx)
    machine["load_average_during_timing"] = [load_before, [round(v, 2) for v in os.getloadavg()]]
    dense_info = {**dense_info, **speed["dense"]}
    for r in results:
        r.update(speed[r["key"]])
        r["speedup_b1"] = dense_info["latency_ms_b1"] / r["latency_ms_b1"]
        r["throughput_gain_b64"] = r["throughput_b64"] / dense_info["throughput_b64"]
        if r.get("ort_latency_ms_b1") and dense_info.get("ort_latency_ms_b1"):
            r["ort_speedup_b1"] = dense_info["ort_latency_ms_b1"] / r["ort_latency_ms_b1"]
            r["ort_throughput_gain_b64"] = r["ort_throughput_b64"] / dense_info["ort_throughput_b64"]
    payload = {**header, "dense": dense_info, "status": "complete", "runs": results,
               "wall_seconds": round(time.perf_counter() - started, 1)}
    paths = write_results(payload, out, stem, plot=True)
    log(f"done in {payload['wall_seconds'] / 60:.1f} min: " + ", ".join(str(p) for p in paths.values()))
    return payload


def onnx_exports(models: dict, folders: dict[str, Path], shape) -> dict[str, Path]:
    """Each model exported with idap's ONNX export beside its bundle, for ONNX Runtime timing; a model that
    does not export is timed in PyTorch only (named in the log)."""
    out = {}
    for name, model in models.items():
        path = folders[name] / "model.onnx"
        try:
            out[name] = export_onnx(model, path, input_shape=shape)
        except BundleError as error:
            log(f"{name}: no ONNX Runtime timing ({error})")
    return out


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
