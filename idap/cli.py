"""Command line over the library: ``data fetch``, ``train``, ``compress``, ``evaluate``.

This is the plain-PyTorch CLI (``python -m idap``). The ``idap`` console script lives at the edge
(``pipelines.cli``): it adds MLflow tracking, S3 locations and the pipeline commands by handing these
functions callbacks, so the library never imports orchestration code.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from idap.atomic import replace_directory, staged_directory
from idap.baseline import train_dense
from idap.bundle import load_bundle, read_bundle_info, save_bundle
from idap.bundle_format import BundleError
from idap.checkpoint import CheckpointMismatch
from idap.checks import check_data, check_model_fits
from idap.compress import CompressionResult, compress
from idap.config import ConfigError, Recipe
from idap.data import DataError, fetch_dataset, input_spec, list_datasets, load_dataset, sample_shape
from idap.metrics import resolve_device
from idap.models import TRUST_ENV, ModelError, list_models, trust_modules
from idap.onnx_export import export_onnx
from idap.report import compression_report, evaluate_model
from idap.report_files import write_report
from idap.state import StepRecord
from idap.surgery import SurgeryError

USER_ERRORS = (ConfigError, DataError, ModelError, BundleError, SurgeryError, FileNotFoundError, ValueError)
# what marks a directory as an earlier idap output that a new run may replace whole
_OUTPUT_MARKERS = ("report.json", "model", "architecture.json", "metrics.json")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def print_step(step: StepRecord) -> None:
    """Default progress line for a trajectory step."""
    what = step.removed.get("block") or ", ".join(
        f"{sum(v.values())} {k}" for k, v in step.removed.items() if isinstance(v, dict) and v) or ""
    log(f"[{step.stage} {step.index}] {step.action:<12} params={step.params:,} MACs={step.macs:,} "
        f"val={step.val_acc:.2f}% {what} {step.note} ({step.seconds:.1f}s)".rstrip())


# ---- arguments ---------------------------------------------------------------------------------
def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help=f"one of {list_datasets()}, an ImageFolder dir or an .npz file")
    p.add_argument("--data-root", default=None, help="where datasets live (default: $IDAP_DATA_ROOT or ./data)")
    p.add_argument("--train-limit", type=int, default=None, help="subsample the training split (quick runs)")
    p.add_argument("--test-limit", type=int, default=None, help="subsample the test split (quick runs)")


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default=None, help="YAML recipe (see recipes/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a recipe field, e.g. --set filter.steps=10 (repeatable)")
    p.add_argument("--max-accuracy-drop", type=float, default=None, help="budget Δ in percentage points")
    p.add_argument("--target-macs-reduction", type=float, default=None, help="e.g. 2 = stop at 2x fewer MACs")
    p.add_argument("--target-params-reduction", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    recipe = Recipe.from_yaml(args.recipe) if args.recipe else Recipe()
    flags = {"max_accuracy_drop": args.max_accuracy_drop, "target_macs_reduction": args.target_macs_reduction,
             "target_params_reduction": args.target_params_reduction, "seed": args.seed, "device": args.device}
    overrides = {k: v for k, v in flags.items() if v is not None}
    if overrides:
        recipe = recipe.with_overrides(overrides)
    return recipe.with_overrides(args.overrides) if args.overrides else recipe


def load_data_for(args: argparse.Namespace, recipe: Recipe | None = None, seed: int = 0):
    return load_data(args.dataset, root=args.data_root, train_limit=args.train_limit, test_limit=args.test_limit,
                     recipe=recipe, seed=seed, tokenizer=getattr(args, "model_dir", None))


def load_data(dataset: str, *, root: str | None = None, train_limit: int | None = None,
              test_limit: int | None = None, recipe: Recipe | None = None, seed: int = 0, tokenizer=None):
    """The dataset split as ``recipe`` asks (its seed, calibration and validation sizes), else with ``seed``.

    ``tokenizer``: the bundle being compressed or evaluated; a text folder is tokenized with its tokenizer."""
    kw = {}
    if recipe is not None:
        kw = {"calibration_size": recipe.calibration_size, "validation_size": recipe.validation_size}
        seed = recipe.seed
    return load_dataset(dataset, root=root, seed=seed, train_limit=train_limit, test_limit=test_limit,
                        tokenizer=tokenizer, **kw)


@dataclass(frozen=True)
class CompressOptions:
    """One ``compress`` run: what ``idap compress``'s flags say (:meth:`from_args`), for :func:`run_compress`.

    Example:
        >>> CompressOptions(dataset="digits", out=Path("out"), model="cnn_small", train_epochs=1)  # doctest: +SKIP
    """

    dataset: str  # a builtin dataset, an ImageFolder dir or an .npz file
    out: Path  # replaced whole at the end; its hidden sibling holds the checkpoint of an unfinished run
    recipe: Recipe = field(default_factory=Recipe)
    model_dir: str | None = None  # the dense bundle; None: train ``model`` for ``train_epochs`` first
    model: str | None = None
    train_epochs: float = 3
    data_root: str | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    latency: bool = True  # measure latency / throughput for the report
    onnx: bool = True  # export model.onnx
    progress: bool = True  # progress bars
    resume: bool = False  # continue the interrupted run of ``out`` (an error when there is none)
    fresh: bool = False  # discard an interrupted run of ``out``

    def __post_init__(self):
        if not self.model_dir and not self.model:
            raise ValueError("compress needs a dense model: a bundle (model_dir) or a model name to train (model)")
        if self.resume and self.fresh:
            raise ValueError("resume and fresh exclude each other")
        object.__setattr__(self, "out", Path(self.out))

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> CompressOptions:
        """The options of a parsed ``idap compress`` command line (the recipe with its flags applied)."""
        return cls(dataset=args.dataset, out=Path(args.out), recipe=recipe_from_args(args), model_dir=args.model_dir,
                   model=args.model, train_epochs=args.train_epochs, data_root=args.data_root,
                   train_limit=args.train_limit, test_limit=args.test_limit, latency=not args.no_latency,
                   onnx=not args.no_onnx, progress=not args.quiet, resume=args.resume, fresh=args.fresh)


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
    model, metrics = train_dense(args.model, data, epochs=args.epochs, seed=args.seed, device=args.device, lr=args.lr,
                                 batch_size=args.batch_size, progress=not args.quiet)
    with staged_directory(out) as tmp:  # a complete bundle with its metrics, or the previous output untouched
        save_bundle(model, tmp / "bundle", input_shape=_shape(data), recipe={"train": vars_json(args)},
                    metadata={"metrics": metrics}, input_spec=input_spec(data))
        for path in (tmp / "bundle").iterdir():
            path.rename(tmp / path.name)
        (tmp / "bundle").rmdir()
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log(f"dense {args.model}: val {metrics['val_acc']:.2f}% test {metrics['test_acc']:.2f}% -> {out}")
    print(json.dumps({k: v for k, v in metrics.items() if k != "dataset"}))
    return 0


def check_output_dir(out: Path, command: str) -> None:
    """Refuse to replace anything but a previous idap output (a user's other files are never deleted)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not any((out / m).exists() for m in _OUTPUT_MARKERS):
        raise ValueError(f"--out {out} exists, is not empty and is not an idap output; {command} replaces its "
                         "output directory whole, so choose a new or empty directory")


def partial_dir(out: Path) -> Path:
    """Where an unfinished ``compress`` into ``out`` keeps its checkpoint (a hidden sibling of ``out``)."""
    return out.with_name(f".{out.name}.partial")


def _dense_for(opts: CompressOptions, data, work: Path):
    """The dense model: the given bundle, or one trained now (kept in ``work`` so a resumed run reuses it)."""
    if opts.model_dir:
        dense = load_bundle(opts.model_dir)
        check_model_fits(dense, data, source=opts.model_dir,
                         input_shape=read_bundle_info(opts.model_dir)["architecture"]["input_shape"])
        return dense, None
    trained, recipe = work / "dense", opts.recipe
    how = {"model": opts.model, "train_epochs": opts.train_epochs, "seed": recipe.seed}
    if (trained / "architecture.json").is_file() and read_bundle_info(trained)["recipe"] == how:
        log(f"reusing the dense {opts.model} trained by the interrupted run ({trained})")
        return load_bundle(trained, trust_modules=_user_module(opts.model)), trained
    log(f"no --model-dir: training a dense {opts.model} for {opts.train_epochs} epochs first")
    dense, _ = train_dense(opts.model, data, epochs=opts.train_epochs, seed=recipe.seed, device=recipe.device,
                           progress=opts.progress)
    save_bundle(dense, trained, input_shape=_shape(data), recipe=how, input_spec=input_spec(data))
    return dense, trained


def _user_module(name: str) -> list[str]:
    return [name.partition(":")[0]] if ":" in name else []


def _prepare_work(work: Path, opts: CompressOptions) -> None:
    """Start, continue or discard the partial run in ``work`` as the options ask."""
    if opts.fresh and work.exists():
        shutil.rmtree(work)
    has_checkpoint = (work / "checkpoint" / "model" / "architecture.json").is_file()
    if opts.resume and not has_checkpoint:
        raise ValueError(f"--resume: no interrupted run of --out {opts.out} to resume (nothing in {work})")
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "result", ignore_errors=True)


def run_compress(
    opts: CompressOptions,
    *,
    on_step: Callable[[StepRecord], None] | None = None,
) -> tuple[Path, dict, CompressionResult]:
    """The body of ``compress``: reusable by the edge, which adds tracking through ``on_step``.

    Whole or nothing: the run works in a hidden sibling of ``opts.out`` and replaces it in one rename at
    the end. After every completed step it checkpoints there, so the same command run again after a kill
    (or with ``resume``) continues from the last completed step and ends with the same model.

    Example:
        >>> out, report, result = run_compress(CompressOptions.from_args(args))       # doctest: +SKIP
    """
    recipe = opts.recipe
    data = load_data(opts.dataset, root=opts.data_root, train_limit=opts.train_limit, test_limit=opts.test_limit,
                     recipe=recipe, tokenizer=opts.model_dir)
    check_data(data)
    out = opts.out
    check_output_dir(out, "idap compress")
    work = partial_dir(out)
    _prepare_work(work, opts)
    def step(rec: StepRecord) -> None:
        print_step(rec)
        if on_step is not None:
            on_step(rec)

    try:
        dense, trained = _dense_for(opts, data, work)
        try:
            result = compress(dense, data, recipe, on_step=step, progress=opts.progress,
                              checkpoint_dir=work / "checkpoint")
        except CheckpointMismatch as exc:
            if opts.resume:
                raise ValueError(f"--resume: {exc}; rerun with --fresh to start over") from None
            log(f"{exc}: starting over")
            shutil.rmtree(work / "checkpoint")
            result = compress(dense, data, recipe, on_step=step, progress=opts.progress,
                              checkpoint_dir=work / "checkpoint")
        if result.resumed_from:
            log(f"resumed the interrupted run at {result.resumed_from}")
        report = _write_outputs(opts, result, data, work / "result", trained)
        replace_directory(work / "result", out)
    except BaseException:
        if (work / "checkpoint" / "model").is_dir():
            log(f"run interrupted; its checkpoint is in {work}: run the same command again to continue")
        else:
            shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)
    r = report["ratios"]
    log(f"compressed: {r['macs_reduction']:.2f}x fewer MACs, {r['params_reduction']:.2f}x fewer params, "
        f"speed-up {r['speedup_b1'] or float('nan'):.2f}x, val drop {r['val_acc_drop_pp']:.2f} pp, "
        f"test {report['compressed']['test_acc']:.2f}%"
        + (f", test perplexity {report['dense']['test_ppl']:.2f} -> {report['compressed']['test_ppl']:.2f}"
           if "test_ppl" in report["compressed"] else "") + f" -> {out}")
    return out, report, result


def _write_outputs(opts: CompressOptions, result: CompressionResult, data, tmp: Path, trained: Path | None) -> dict:
    """Everything ``opts.out`` will hold, written into ``tmp``."""
    model, recipe = result.model.cpu(), opts.recipe
    log("measuring dense vs compressed (accuracy, MACs, latency)...")
    report = compression_report(result.dense.cpu(), model, data, recipe=recipe.to_dict(),
                                steps=[s.to_json() for s in result.steps], profile=result.profile.to_json(),
                                latency=opts.latency, extra={"compress_seconds": round(result.seconds, 1)})
    metadata = {"report": {k: report[k] for k in ("dense", "compressed", "ratios")}, "dataset": data.describe(),
                "recipe_digest": recipe.digest(), "base_model": opts.model_dir or opts.model}
    tmp.mkdir(parents=True, exist_ok=True)
    save_bundle(model, tmp / "model", input_shape=_shape(data), recipe=recipe.to_dict(), metadata=metadata,
                input_spec=input_spec(data))
    if trained is not None:
        shutil.copytree(trained, tmp / "dense")
    if opts.onnx:
        export_onnx(model, tmp / "model.onnx", input_shape=_shape(data))
    (tmp / "recipe.yaml").write_text(recipe.to_yaml())
    write_report(report, tmp)
    return report


def cmd_compress(args: argparse.Namespace) -> int:
    _, report, _ = run_compress(CompressOptions.from_args(args))
    print(json.dumps({"out": args.out, **report["ratios"], "test_acc": report["compressed"]["test_acc"]}))
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
        from idap.speed import measure_speed

        result.update(measure_speed({"m": model.cpu()}, _shape(data))["m"])
    print(json.dumps(result, indent=2))
    return 0


def _shape(data) -> tuple[int, ...]:
    return sample_shape(data)


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

    from idap.import_cli import add_import_arguments

    p = sub.add_parser("import", help="turn trained weights (or a bundle) into a checked bundle")
    add_import_arguments(p)
    from idap.text_cli import add_text_commands  # idap text finetune | compress | evaluate

    add_text_commands(sub)
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
