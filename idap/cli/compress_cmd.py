"""``idap compress``: its options, the resumable run (staged output, checkpoint, report) and the command."""


from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from idap.atomic import replace_directory
from idap.bundle.format import BundleError
from idap.bundle.onnx_export import export_onnx
from idap.bundle.store import load_bundle, read_bundle_info, save_bundle
from idap.cli.common import RunPrinter, load_data, log, recipe_from_args
from idap.data.checks import check_data, check_model_fits
from idap.data.splits import DataError, input_spec, sample_shape
from idap.dense.baseline import train_dense
from idap.models.registry import ModelError
from idap.prune.checkpoint import CheckpointMismatch
from idap.prune.compress import CompressionResult, compress
from idap.prune.config import ConfigError, Recipe
from idap.prune.state import StepRecord
from idap.prune.surgery import SurgeryError
from idap.prune.timing import RunPlan, time_summary
from idap.report.evaluate import chance_warning, compression_report
from idap.report.files import write_report

USER_ERRORS = (ConfigError, DataError, ModelError, BundleError, SurgeryError, FileNotFoundError, ValueError)
# what marks a directory as an earlier idap output that a new run may replace whole
_OUTPUT_MARKERS = ("report.json", "model", "architecture.json", "metrics.json")


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
    save_bundle(dense, trained, input_shape=sample_shape(data), recipe=how, input_spec=input_spec(data))
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
    on_plan: Callable[[RunPlan], None] | None = None,
) -> tuple[Path, dict, CompressionResult]:
    """The body of ``compress``: reusable by the edge, which adds tracking through ``on_step`` and ``on_plan``.

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
    printer = RunPrinter(recipe)

    def step(rec: StepRecord) -> None:
        printer.on_step(rec)
        if on_step is not None:
            on_step(rec)

    def plan(p: RunPlan) -> None:
        printer.on_plan(p)
        if on_plan is not None:
            on_plan(p)

    try:
        dense, trained = _dense_for(opts, data, work)
        try:
            result = compress(dense, data, recipe, on_step=step, progress=opts.progress,
                              checkpoint_dir=work / "checkpoint", on_plan=plan)
        except CheckpointMismatch as exc:
            if opts.resume:
                raise ValueError(f"--resume: {exc}; rerun with --fresh to start over") from None
            log(f"{exc}: starting over")
            shutil.rmtree(work / "checkpoint")
            result = compress(dense, data, recipe, on_step=step, progress=opts.progress,
                              checkpoint_dir=work / "checkpoint", on_plan=plan)
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
    timing = report.get("time") or {}
    if timing.get("estimate_s") is not None:
        log(f"time: estimated {timing['estimate_s']:.0f} s, took {timing['actual_s']:.0f} s"
            + (f" (budget {timing['budget_s']:.0f} s)" if timing.get("budget_s") else "")
            + (f"; {timing['verdict']}" if timing.get("verdict") else ""))
    for label in ("dense", "compressed"):  # a model near chance is no model: say so, never silently
        warning = chance_warning(report[label], data.num_classes, what=f"the {label} model")
        if warning:
            log(f"warning: {warning}")
    return out, report, result


def _write_outputs(opts: CompressOptions, result: CompressionResult, data, tmp: Path, trained: Path | None) -> dict:
    """Everything ``opts.out`` will hold, written into ``tmp``."""
    model, recipe = result.model.cpu(), result.recipe  # the budgets the time plan sized, when it sized any
    log("measuring dense vs compressed (accuracy, MACs, latency)...")
    report = compression_report(result.dense.cpu(), model, data, recipe=recipe.to_dict(),
                                steps=[s.to_json() for s in result.steps], profile=result.profile.to_json(),
                                latency=opts.latency, extra={"compress_seconds": round(result.seconds, 1),
                                                             "time": time_summary(result.state and result.state.time_plan,
                                                                                  result.seconds, result.steps)})
    metadata = {"report": {k: report[k] for k in ("dense", "compressed", "ratios")}, "dataset": data.describe(),
                "recipe_digest": recipe.digest(), "base_model": opts.model_dir or opts.model}
    tmp.mkdir(parents=True, exist_ok=True)
    save_bundle(model, tmp / "model", input_shape=sample_shape(data), recipe=recipe.to_dict(), metadata=metadata,
                input_spec=input_spec(data))
    if trained is not None:
        shutil.copytree(trained, tmp / "dense")
    if opts.onnx:
        export_onnx(model, tmp / "model.onnx", input_shape=sample_shape(data))
    (tmp / "recipe.yaml").write_text(recipe.to_yaml())
    write_report(report, tmp)
    return report


def cmd_compress(args: argparse.Namespace) -> int:
    _, report, _ = run_compress(CompressOptions.from_args(args))
    print(json.dumps({"out": args.out, **report["ratios"], "test_acc": report["compressed"]["test_acc"]}))
    return 0

