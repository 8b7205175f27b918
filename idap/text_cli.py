"""``idap text finetune | compress | evaluate``: the text path of the command line.

A pretrained Hugging Face BERT directory is fine-tuned with a classification head on a folder of class
subfolders, then compressed by the same stages as the image models (heads + FFN neurons, then layers,
then distillation). Model directories are :mod:`idap.text_models` directories (a Hugging Face model +
``idap_text.json``); they carry the tokenizer and the data settings, so ``compress`` and ``evaluate``
cut the very same splits as ``finetune`` did.

Example:
    idap text finetune --model path/to/minilm --data bbcnews/data --max-length 128 --steps 300 --out runs/dense
    idap text compress --model-dir runs/dense --data bbcnews/data --target-macs 1.5 --max-drop 1.0 --out runs/small
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from idap.text_models import META_FILE


def _data(args: argparse.Namespace, model_dir: Path, settings: dict | None = None):
    from idap.text import load_text_folder, load_tokenizer

    s = dict(settings or {})
    for key in ("max_length", "seed", "per_class_limit", "calibration_size", "validation_size"):
        value = getattr(args, key, None)
        if value is not None:
            s[key] = value
    s.setdefault("max_length", 128)
    s.setdefault("seed", 0)
    config = json.loads((model_dir / "config.json").read_text())
    data = load_text_folder(args.data, load_tokenizer(model_dir), vocab_size=config["vocab_size"],
                            pad_id=config.get("pad_token_id") or 0, **s)
    return data, s


def _measure(model, data) -> dict:
    from idap.metrics import accuracy, count_macs, count_params

    return {"val_acc": accuracy(model, data.val_x, data.val_y, batch_size=64),
            "test_acc": accuracy(model, data.test_x, data.test_y, batch_size=64),
            "params": count_params(model), "macs": count_macs(model, data.input_shape)}


def cmd_finetune(args: argparse.Namespace) -> int:
    from idap.config import RecoveryConfig
    from idap.recovery import recover
    from idap.text_models import load_bert_classifier, save_text_model

    torch.manual_seed(args.seed)
    model_dir = Path(args.model)
    data, settings = _data(args, model_dir)
    model = load_bert_classifier(model_dir, data.num_classes, seed=args.seed)
    started = time.perf_counter()
    recover(model, None, data.train_x, data.train_y, steps=args.steps, seed=args.seed, device=torch.device("cpu"),
            config=RecoveryConfig(batch_size=args.batch_size, lr=args.lr, weight_decay=0.01, augment=False),
            schedule="cosine", progress=not args.quiet, desc="fine-tune")
    metrics = {**_measure(model, data), "seconds": round(time.perf_counter() - started, 1), "data": data.describe()}
    out = save_text_model(model, args.out, tokenizer_dir=model_dir,
                          extra={"data": settings, "classes": list(data.classes)})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps({k: metrics[k] for k in ("val_acc", "test_acc", "params", "macs")}))
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from idap import compress
    from idap.config import Recipe
    from idap.text_models import load_text_model, save_text_model

    model_dir = Path(args.model_dir)
    meta = json.loads((model_dir / META_FILE).read_text())
    dense = load_text_model(model_dir)
    data, settings = _data(args, model_dir, meta.get("data"))
    recipe = Recipe.from_yaml(args.recipe) if args.recipe else Recipe()
    changes = {"device": "cpu"}
    if args.target_macs is not None:
        changes["target_macs_reduction"] = args.target_macs
    if args.max_drop is not None:
        changes["max_accuracy_drop"] = args.max_drop
    recipe = recipe.replace(**changes).with_overrides(args.set or [])
    result = compress(dense, data, recipe, progress=not args.quiet,
                      on_step=None if args.quiet else lambda r: print(f"{r.stage} {r.index} {r.action}: val {r.val_acc:.2f} %, "
                                                                     f"{r.macs} MACs {r.note}", file=sys.stderr))
    out = Path(args.out)
    save_text_model(result.model, out / "model", tokenizer_dir=model_dir, extra={"data": settings, "classes": meta.get("classes")})
    before, after = _measure(result.dense, data), _measure(result.model, data)
    report = {"dense": before, "compressed": after, "macs_reduction": before["macs"] / after["macs"],
              "params_reduction": before["params"] / after["params"], "recipe": recipe.to_dict() if hasattr(recipe, "to_dict") else None,
              "trajectory": [r.to_json() for r in result.steps], "seconds": round(result.seconds, 1)}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({"dense_test_acc": before["test_acc"], "test_acc": after["test_acc"],
                      "macs_reduction": round(report["macs_reduction"], 3)}))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from idap.text_models import load_text_model

    model_dir = Path(args.model_dir)
    meta = json.loads((model_dir / META_FILE).read_text())
    data, _ = _data(args, model_dir, meta.get("data"))
    print(json.dumps(_measure(load_text_model(model_dir), data)))
    return 0


def add_text_commands(sub) -> None:
    """Register ``idap text ...`` on the top-level subparsers."""
    p = sub.add_parser("text", help="text models (BERT encoders): finetune, compress, evaluate")
    tsub = p.add_subparsers(dest="text_command", required=True)

    def data_args(q, defaults: bool) -> None:
        q.add_argument("--data", required=True, help="folder of class subfolders holding .txt files")
        q.add_argument("--max-length", dest="max_length", type=int, default=128 if defaults else None)
        q.add_argument("--per-class", dest="per_class_limit", type=int, default=None)
        q.add_argument("--calibration-size", dest="calibration_size", type=int, default=128 if defaults else None)
        q.add_argument("--validation-size", dest="validation_size", type=int, default=256 if defaults else None)
        q.add_argument("--quiet", action="store_true")

    f = tsub.add_parser("finetune", help="pretrained Hugging Face BERT dir + classification head -> model dir")
    f.add_argument("--model", required=True, help="Hugging Face model directory (config.json, model.safetensors, tokenizer.json)")
    data_args(f, True)
    f.add_argument("--steps", type=int, default=300)
    f.add_argument("--lr", type=float, default=1e-4)
    f.add_argument("--batch-size", type=int, default=16)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", required=True)
    f.set_defaults(func=cmd_finetune)

    c = tsub.add_parser("compress", help="compress a fine-tuned text model dir -> OUT/model, OUT/report.json")
    c.add_argument("--model-dir", required=True)
    data_args(c, False)
    c.add_argument("--recipe", default=None, help="recipe YAML (default: the default recipe)")
    c.add_argument("--target-macs", type=float, default=None)
    c.add_argument("--max-drop", type=float, default=None)
    c.add_argument("--set", action="append", help="recipe override, e.g. --set recovery.lr=5e-5")
    c.add_argument("--out", required=True)
    c.set_defaults(func=cmd_compress)

    e = tsub.add_parser("evaluate", help="accuracy, params and MACs of a text model dir -> JSON on stdout")
    e.add_argument("--model-dir", required=True)
    data_args(e, False)
    e.set_defaults(func=cmd_evaluate)
