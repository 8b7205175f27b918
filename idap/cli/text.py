"""``idap text finetune | compress | evaluate | export-hf``: the text path of the command line, over the common one.

``finetune`` imports a pretrained Hugging Face BERT directory (as ``idap import`` does: a bundle with the
tokenizer inside), trains it with a classification head on a folder of class subfolders and writes the
bundle; ``compress`` and ``evaluate`` are ``idap compress`` / ``idap evaluate`` on that bundle, with the
folder given as a ``kind: text`` dataset spec that names the bundle's tokenizer and the data settings the
fine-tune used (tokens, per-class limit, seed, calibration and validation sizes), so every command cuts the
very same splits and the fine-tune never trains on what compression validates on.

Example:
    idap text finetune --model path/to/minilm --data bbcnews/data --max-length 128 --steps 300 --out runs/dense
    idap text compress --model-dir runs/dense --data bbcnews/data --target-macs 1.5 --max-drop 1.0 --out runs/small
    idap text export-hf --model-dir runs/small/model --out runs/small-hf
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

_SPLIT_KEYS = ("seed", "calibration_size", "validation_size")

# A fine-tuned encoder's recipe when no --recipe is given (the image defaults are sized for CNNs from scratch):
# AdamW at 1e-3 wrecks a BERT within a few dozen steps (MiniLM / BBC: 96.5 -> 60.9 % validation after a 54-step
# fine-tune), so recovery uses the fine-tune's scale of learning rate, logit distillation from the dense
# encoder, small batches (a CPU step at batch 128 x 64 tokens takes seconds) and no image augmentation; the
# schedule takes fewer, larger steps (benchmarks/text.py measured these settings on MiniLM / BBC News).
TEXT_RECIPE = {
    "filter.p0": 0.1, "filter.steps": 6, "eval_batch_size": 64,
    "recovery.step_budget": 30, "recovery.final_budget": 120, "recovery.batch_size": 16,
    "recovery.lr": 5e-5, "recovery.final_lr": 5e-5, "recovery.weight_decay": 0.01,
    "recovery.lambda_kd": 1.0, "recovery.teacher": "dense", "recovery.augment": False,
}


def _settings(args: argparse.Namespace, saved: dict | None = None) -> dict:
    """The data settings: the saved ones (a bundle's ``text_data``), overridden by the flags given."""
    s = {"max_length": 128, "seed": 0, "per_class_limit": None, "calibration_size": 128, "validation_size": 256,
         **(saved or {})}
    for key in s:
        value = getattr(args, key, None)
        if value is not None:
            s[key] = value
    return s


def _spec(directory: Path, data: str, bundle: str | Path, s: dict) -> Path:
    """A ``kind: text`` dataset spec for ``idap compress`` / ``idap evaluate``: the folder, the bundle's tokenizer."""
    spec = {"kind": "text", "path": str(Path(data).resolve()), "tokenizer": str(Path(bundle).resolve()),
            "max_length": s["max_length"], "name": Path(data).name}
    if s.get("per_class_limit"):
        spec["per_class_limit"] = s["per_class_limit"]
    path = directory / "text-dataset.json"
    path.write_text(json.dumps(spec))
    return path


def _saved_settings(model_dir: str) -> dict:
    from idap.bundle.store import read_bundle_info

    info = read_bundle_info(model_dir)
    saved = dict(info["metadata"].get("text_data") or {})
    if not saved:  # a compressed bundle: its dataset description and the recipe that cut its splits
        dataset = info["metadata"].get("dataset") or {}
        saved = {k: dataset[k] for k in ("max_length", "per_class_limit") if k in dataset}
        saved.update({k: info["recipe"][k] for k in _SPLIT_KEYS if k in info["recipe"]})
    return saved


def cmd_finetune(args: argparse.Namespace) -> int:
    from idap.bundle.store import save_bundle
    from idap.data.text import load_text_folder, load_tokenizer
    from idap.dense.text_models import hf_bundle_model
    from idap.prune.config import Recipe, RecoveryConfig
    from idap.prune.recovery import recover

    torch.manual_seed(args.seed)
    s = _settings(args)
    model_dir = Path(args.model)
    config = json.loads((model_dir / "config.json").read_text()) if (model_dir / "config.json").is_file() else {}
    data = load_text_folder(args.data, load_tokenizer(model_dir), vocab_size=config.get("vocab_size"),
                            pad_id=config.get("pad_token_id") or 0, **s)
    model, _ = hf_bundle_model(model_dir, num_classes=data.num_classes, max_length=s["max_length"], seed=args.seed)
    started = time.perf_counter()
    recover(model, None, data.train_x, data.train_y, steps=args.steps, seed=args.seed, device=torch.device("cpu"),
            config=RecoveryConfig(batch_size=args.batch_size, lr=args.lr, weight_decay=0.01, augment=False),
            schedule="cosine", progress=not args.quiet, desc="fine-tune")
    metrics = {**_measure(model, data), "seconds": round(time.perf_counter() - started, 1)}
    # the recipe records how the splits were cut, so `idap evaluate` on this bundle cuts the same ones
    recipe = Recipe(seed=s["seed"], calibration_size=s["calibration_size"], validation_size=s["validation_size"])
    out = save_bundle(model.eval(), args.out, input_shape=data.input_shape, recipe=recipe.to_dict(),
                      metadata={"metrics": metrics, "dataset": data.describe(), "text_data": s,
                                "fine_tune": {"from": str(model_dir), "steps": args.steps, "lr": args.lr}})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps({k: metrics[k] for k in ("val_acc", "test_acc", "params", "macs")}))
    return 0


def _measure(model, data) -> dict:
    from idap.report.evaluate import evaluate_model

    return evaluate_model(model, data, batch_size=64)


def cmd_compress(args: argparse.Namespace) -> int:
    s = _settings(args, _saved_settings(args.model_dir))
    argv = ["compress", "--model-dir", args.model_dir, "--out", args.out, "--device", "cpu", "--no-latency"]
    if args.recipe:
        argv += ["--recipe", args.recipe]
    else:  # the user's --set items come later and win
        argv += sum((["--set", f"{k}={str(v).lower() if isinstance(v, bool) else v}"] for k, v in TEXT_RECIPE.items()), [])
    if args.target_macs is not None:
        argv += ["--target-macs-reduction", str(args.target_macs)]
    if args.max_drop is not None:
        argv += ["--max-accuracy-drop", str(args.max_drop)]
    if args.time_budget is not None:
        argv += ["--time-budget", args.time_budget]
    argv += sum((["--set", f"{k}={s[k]}"] for k in _SPLIT_KEYS), [])
    argv += sum((["--set", item] for item in args.set or []), [])
    if args.quiet:
        argv.append("--quiet")
    with tempfile.TemporaryDirectory(prefix="idap-text-") as tmp:
        return args.dispatch([*argv, "--dataset", str(_spec(Path(tmp), args.data, args.model_dir, s))])


def cmd_evaluate(args: argparse.Namespace) -> int:
    s = _settings(args, _saved_settings(args.model_dir))
    with tempfile.TemporaryDirectory(prefix="idap-text-") as tmp:
        spec = _spec(Path(tmp), args.data, args.model_dir, s)
        return args.dispatch(["evaluate", "--model-dir", args.model_dir, "--dataset", str(spec), "--no-latency"])


def cmd_export_hf(args: argparse.Namespace) -> int:
    from idap.dense.hf_export import export_hf_directory

    print(json.dumps(export_hf_directory(args.model_dir, args.out)))
    return 0


def add_text_commands(sub, dispatch) -> None:
    """Register ``idap text ...`` on the top-level subparsers; ``dispatch(argv) -> exit code`` runs an ``idap``
    command line (text compress / evaluate are idap's own compress / evaluate on a spec written here)."""
    p = sub.add_parser("text", help="text models (BERT encoders): finetune, compress, evaluate")
    tsub = p.add_subparsers(dest="text_command", required=True)

    def data_args(q) -> None:
        q.add_argument("--data", required=True, help="folder of class subfolders holding .txt files")
        q.add_argument("--max-length", dest="max_length", type=int, default=None, help="tokens per text (default 128)")
        q.add_argument("--per-class", dest="per_class_limit", type=int, default=None)
        q.add_argument("--calibration-size", dest="calibration_size", type=int, default=None, help="default 128")
        q.add_argument("--validation-size", dest="validation_size", type=int, default=None, help="default 256")
        q.add_argument("--quiet", action="store_true")

    f = tsub.add_parser("finetune", help="pretrained Hugging Face BERT dir + classification head -> bundle")
    f.add_argument("--model", required=True, help="Hugging Face model directory (config.json, model.safetensors, tokenizer.json)")
    data_args(f)
    f.add_argument("--steps", type=int, default=300)
    f.add_argument("--lr", type=float, default=1e-4)
    f.add_argument("--batch-size", type=int, default=16)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", required=True)
    f.set_defaults(func=cmd_finetune)

    c = tsub.add_parser("compress", help="idap compress on a fine-tuned text bundle -> OUT/model, OUT/report.json")
    c.add_argument("--model-dir", required=True)
    data_args(c)
    c.add_argument("--recipe", default=None, help="recipe YAML (default: the default recipe with the text settings of idap.cli.text.TEXT_RECIPE)")
    c.add_argument("--target-macs", type=float, default=None)
    c.add_argument("--max-drop", type=float, default=None)
    c.add_argument("--time-budget", default=None, metavar="DURATION",
                   help="wall time for the compression, e.g. 15m (the recovery budgets are sized to fit)")
    c.add_argument("--set", action="append", help="recipe override, e.g. --set recovery.lr=5e-5")
    c.add_argument("--out", required=True)
    c.set_defaults(func=cmd_compress, dispatch=dispatch)

    e = tsub.add_parser("evaluate", help="idap evaluate on a text bundle -> JSON on stdout")
    e.add_argument("--model-dir", required=True)
    data_args(e)
    e.set_defaults(func=cmd_evaluate, dispatch=dispatch)

    x = tsub.add_parser("export-hf", help="a text bundle (pruned or not) -> a Hugging Face directory + idap_text.json")
    x.add_argument("--model-dir", required=True, help="the bundle (e.g. OUT/model of idap compress)")
    x.add_argument("--out", required=True, help="a new or empty directory (or an earlier export, replaced whole)")
    x.set_defaults(func=cmd_export_hf)
