"""Command line over the library: ``data fetch``, ``train``, ``compress``, ``evaluate``.

This is the plain-PyTorch CLI (``python -m idap``). The ``idap`` console script lives at the edge
(``pipelines.cli``): it adds MLflow tracking, S3 locations and the pipeline commands by handing these
functions callbacks, so the library never imports orchestration code.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

from idap.atomic import staged_directory
from idap.bundle.format import BundleError
from idap.bundle.store import load_bundle, read_bundle_info, save_bundle
from idap.cli.common import add_data_args, add_recipe_args, load_data, load_data_for, log
from idap.cli.compress_cmd import CompressOptions, check_output_dir, cmd_compress, run_compress
from idap.data.checks import check_data, check_model_fits
from idap.data.sources import fetch_dataset, list_datasets, load_dataset
from idap.data.splits import DataError, input_spec, sample_shape
from idap.dense.baseline import train_dense
from idap.measure.metrics import resolve_device
from idap.models.registry import TRUST_ENV, ModelError, list_models, trust_modules
from idap.prune.config import ConfigError, Recipe
from idap.prune.surgery import SurgeryError
from idap.report.evaluate import evaluate_model

USER_ERRORS = (ConfigError, DataError, ModelError, BundleError, SurgeryError, FileNotFoundError, ValueError)
# what marks a directory as an earlier idap output that a new run may replace whole
_OUTPUT_MARKERS = ("report.json", "model", "architecture.json", "metrics.json")


















# ---- commands ----------------------------------------------------------------------------------
def cmd_data(args: argparse.Namespace) -> int:
    path = fetch_dataset(args.name, args.data_root)
    data = load_dataset(args.name, root=args.data_root)
    print(json.dumps({"path": str(path), **data.describe()}, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    data = load_data_for(args, seed=args.seed)
    out = Path(args.out)
    check_output_dir(out, "idap train")  # train_dense checks the data before it trains
    with warnings.catch_warnings(record=True) as caught:  # the schedule and chance notes, as plain console lines
        warnings.simplefilter("always", UserWarning)
        model, metrics = train_dense(args.model, data, epochs=args.epochs, seed=args.seed, device=args.device,
                                     lr=args.lr, batch_size=args.batch_size, progress=not args.quiet)
    for w in caught:
        log(f"warning: {w.message}")
    with staged_directory(out) as tmp:  # a complete bundle with its metrics, or the previous output untouched
        save_bundle(model, tmp / "bundle", input_shape=sample_shape(data), recipe={"train": vars_json(args)},
                    metadata={"metrics": metrics}, input_spec=input_spec(data))
        for path in (tmp / "bundle").iterdir():
            path.rename(tmp / path.name)
        (tmp / "bundle").rmdir()
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log(f"dense {args.model}: val {metrics['val_acc']:.2f}% test {metrics['test_acc']:.2f}% -> {out}")
    print(json.dumps({k: v for k, v in metrics.items() if k != "dataset"}))
    return 0


















def cmd_evaluate(args: argparse.Namespace) -> int:
    model = load_bundle(args.model_dir)
    info = read_bundle_info(args.model_dir)
    saved = info.get("recipe") or {}
    try:  # the splits the model was compressed with, so validation figures match its report
        recipe = Recipe.from_dict(saved) if args.seed is None else None
    except ConfigError:
        recipe = None
    data = load_data_for(args, recipe, seed=args.seed or 0)
    check_data(data, need_train=False)
    check_model_fits(model, data, source=args.model_dir, input_shape=info["architecture"]["input_shape"])
    dev = resolve_device(args.device or "auto")
    result = evaluate_model(model, data, device=dev)
    if not args.no_latency:
        from idap.measure.speed import measure_speed

        result.update(measure_speed({"m": model.cpu()}, sample_shape(data))["m"])
    print(json.dumps(result, indent=2))
    return 0


def vars_json(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None), list))}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idap", description="IDAP++ divergence-based structured pruning")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="datasets")
    dsub = p.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="obtain a builtin dataset and print its description")
    f.add_argument("name", choices=list_datasets())
    f.add_argument("--data-root", default=None)
    f.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train a dense baseline -> bundle + metrics.json")
    p.add_argument("--model", required=True, help=f"one of {list_models()} or package.module:factory")
    add_data_args(p)
    p.add_argument("--epochs", type=float, default=5)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--out", required=True)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compress", help="compress a model with IDAP++ -> DIR/model, DIR/report.{json,md}")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-dir", help="a bundle (from idap train or another compress)")
    src.add_argument("--model", help="a registered model name: a dense baseline is trained first")
    p.add_argument("--train-epochs", type=float, default=3, help="with --model: epochs of the dense baseline")
    add_data_args(p)
    add_recipe_args(p)
    p.add_argument("--out", required=True)
    p.add_argument("--no-latency", action="store_true", help="skip latency/throughput measurement")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue the interrupted run of this --out (an error when there is none); the same "
                            "command without it also continues a matching interrupted run")
    again.add_argument("--fresh", action="store_true", help="discard an interrupted run of this --out and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("evaluate", help="evaluate a bundle -> JSON on stdout")
    p.add_argument("--model-dir", required=True)
    add_data_args(p)
    p.add_argument("--seed", type=int, default=None, help="split seed (default: the bundle's recipe seed, else 0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    p.add_argument("--no-latency", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    from idap.cli.import_cmd import add_import_arguments

    p = sub.add_parser("import", help="turn trained weights (or a bundle) into a checked bundle")
    add_import_arguments(p)
    from idap.cli.text import add_text_commands  # idap text finetune | compress | evaluate

    # the text commands run idap's own compress / evaluate: handed a dispatcher, they never import this module
    add_text_commands(sub, dispatch=main)
    for name, p in sub.choices.items():
        if name != "data":
            p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
            p.add_argument("--trust-module", dest="trust_modules", action="append", default=[], metavar="MODULE",
                           help="let bundles name model factories from this module (repeatable; also "
                                f"${TRUST_ENV}); a bundle never imports code on its own")
    parser.commands = sub  # the edge (pipelines.cli) adds its own commands and flags here
    return parser


def run(args: argparse.Namespace) -> int:
    """Run a parsed command; user errors become one clear line and exit code 2."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        trust_modules(*getattr(args, "trust_modules", ()))
        if ":" in (getattr(args, "model", None) or ""):  # a factory the user named on the command line
            trust_modules(args.model.partition(":")[0])
        return args.func(args)
    except USER_ERRORS as exc:
        log(f"error: {type(exc).__name__}: {exc}")
        return 2


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


__all__ = ["CompressOptions", "build_parser", "load_data", "main", "run", "run_compress", "train_dense"]
