"""Ablation of filter.rollback_retries: does retrying a rolled-back step at half the size beat the spec?

The spec ends stage 1 at the first step that breaks the accuracy budget; with ``filter.rollback_retries=R``
the step is retried at half the size (NNCF's adaptive compression level) up to R halvings. Budget mode,
the user's question: within a 1 pp validation budget, how many fewer MACs? Stage 1 only (blocks off, so the
flag is what differs), the same schedule, per-step recovery and final fine-tune for both arms, two seeds.

    python -m benchmarks.rollback_ablation --out benchmarks/results/rollback-retries

REDUCED setting for a 2-core CPU (the arguments say which): a subset of Fashion-MNIST, a dense model
trained a few epochs, short recovery budgets. The dense model and every finished run are cached under
``benchmarks/work/rollback-ablation`` (an interrupted run resumes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from idap.cli import log
from idap.data import load_dataset
from idap.measure.metrics import count_macs, count_params, cpu_name
from idap.models import create_model
from idap.prune.compress import compress
from idap.prune.config import Recipe
from idap.prune.recovery import train
from idap.report import evaluate_model

SETTINGS = {
    # name: dataset, model, train_limit, dense epochs, p0, steps, step_budget, final_budget
    "fashion-mobilenetv2": ("fashion-mnist", "mobilenet_v2", 6000, 4, 0.05, 10, 20, 100),
    "fashion-resnet20": ("fashion-mnist", "resnet20", 6000, 4, 0.05, 10, 20, 100),
    "digits-resnet20": ("digits", "resnet20", None, 15, 0.2, 6, 10, 40),
}


def dense_model(name: str, data, work: Path):
    dataset, model_name, _, epochs, *_ = SETTINGS[name]
    path = work / f"{name}-dense.pt"
    torch.manual_seed(0)
    model = create_model(model_name, data.num_classes, data.in_channels, data.image_size)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        train(model, data.train_x, data.train_y, epochs=epochs, batch_size=128, lr=0.05, seed=0,
              device=torch.device("cpu"))
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval()


def run_arm(name: str, data, dense, retries: int, seed: int, budget: float, work: Path) -> dict:
    path = work / f"{name}-r{retries}-s{seed}-b{budget}.json"
    if path.is_file():
        return json.loads(path.read_text())
    _, _, _, _, p0, steps, step_budget, final_budget = SETTINGS[name]
    recipe = Recipe.from_dict({
        "seed": seed, "device": "cpu", "max_accuracy_drop": budget, "calibration_size": len(data.calib_y),
        "eval_batch_size": 512, "filter": {"p0": p0, "steps": steps, "rollback_retries": retries},
        "layer": {"enabled": False}, "recovery": {"step_budget": step_budget, "final_budget": final_budget}})
    started = time.perf_counter()
    result = compress(dense, data, recipe)
    shape = (data.in_channels, data.image_size, data.image_size)
    ev = evaluate_model(result.model, data)
    filt = [s for s in result.steps if s.stage == "filter"]
    row = {"setting": name, "rollback_retries": retries, "seed": seed, "budget_pp": budget,
           "macs_reduction": count_macs(dense, shape) / count_macs(result.model, shape),
           "params_reduction": count_params(dense) / count_params(result.model),
           "val_acc": ev["val_acc"], "test_acc": ev["test_acc"],
           "accepted_steps": sum(s.action == "prune" for s in filt),
           "rollbacks": sum(s.action == "rollback" for s in filt),
           "optimizer_steps": sum(s.recovery_steps or 0 for s in result.steps),
           "actions": [s.action for s in filt], "seconds": round(time.perf_counter() - started, 1)}
    path.write_text(json.dumps(row, indent=1))
    return row


def summarize(rows: list[dict], dense: dict) -> str:
    out = ["| setting | rollback_retries | seeds | MACs reduction (mean, min-max) | params reduction | "
           "val drop pp | test drop pp | accepted steps | rollbacks |", "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    keys = sorted({(r["setting"], r["rollback_retries"]) for r in rows})
    for setting, retries in keys:
        rs = [r for r in rows if r["setting"] == setting and r["rollback_retries"] == retries]
        m = [r["macs_reduction"] for r in rs]
        d = dense[setting]
        out.append(f"| {setting} | {retries} | {len(rs)} | {statistics.mean(m):.2f}x ({min(m):.2f}-{max(m):.2f}) | "
                   f"{statistics.mean(r['params_reduction'] for r in rs):.2f}x | "
                   f"{statistics.mean(d['val_acc'] - r['val_acc'] for r in rs):.2f} | "
                   f"{statistics.mean(d['test_acc'] - r['test_acc'] for r in rs):.2f} | "
                   f"{statistics.mean(r['accepted_steps'] for r in rs):.1f} | "
                   f"{statistics.mean(r['rollbacks'] for r in rs):.1f} |")
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", nargs="+", default=["fashion-mobilenetv2", "digits-resnet20"], choices=sorted(SETTINGS))
    p.add_argument("--retries", nargs="+", type=int, default=[0, 3])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--budget", type=float, default=1.0)
    p.add_argument("--work", type=Path, default=Path("benchmarks/work/rollback-ablation"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/rollback-retries"))
    p.add_argument("--cached-only", action="store_true", help="summarize the finished arms, run nothing new")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    a.work.mkdir(parents=True, exist_ok=True)
    rows, dense_info = [], {}
    for name in a.settings:
        dataset, _, limit, *_ = SETTINGS[name]
        data = load_dataset(dataset, seed=0, calibration_size=256, validation_size=1000, train_limit=limit,
                            test_limit=2000)
        dense = dense_model(name, data, a.work)
        dense_info[name] = evaluate_model(dense, data)
        log(f"{name}: dense val {dense_info[name]['val_acc']:.2f}% test {dense_info[name]['test_acc']:.2f}%")
        for seed in a.seeds:
            for retries in a.retries:
                if a.cached_only and not (a.work / f"{name}-r{retries}-s{seed}-b{a.budget}.json").is_file():
                    continue
                row = run_arm(name, data, dense, retries, seed, a.budget, a.work)
                log(f"  retries={retries} seed={seed}: {row['macs_reduction']:.2f}x MACs, val {row['val_acc']:.2f}%, "
                    f"{row['actions']} ({row['seconds']} s)")
                rows.append(row)
    table = summarize(rows, dense_info)
    a.out.mkdir(parents=True, exist_ok=True)
    doc = {"machine": cpu_name(), "threads": 1, "reduced": True, "budget_pp": a.budget, "settings":
           {n: dict(zip(("dataset", "model", "train_limit", "dense_epochs", "p0", "steps", "step_budget",
                          "final_budget"), SETTINGS[n], strict=True)) for n in a.settings},
           "dense": {n: {k: d[k] for k in ("val_acc", "test_acc")} for n, d in dense_info.items()}, "rows": rows}
    (a.out / "results.json").write_text(json.dumps(doc, indent=1))
    (a.out / "results.md").write_text(
        f"# filter.rollback_retries ablation (REDUCED CPU setting)\n\nMachine: {doc['machine']}, 1 thread. "
        f"Budget {a.budget} pp validation, stage 1 only, calibration 256, validation 1,000, test 2,000 images.\n\n"
        + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
