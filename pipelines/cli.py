"""The ``idap`` console script: the library's commands plus what only the edge can do.

``idap.cli.commands`` is the plain-PyTorch CLI; this module builds its parser and adds MLflow tracking to
``idap compress`` (``--no-track`` to skip it), s3:// locations, ``idap promote`` and the pipeline
commands::

    idap pipeline compile [--out DIR]                       IR YAML of every pipeline
    idap pipeline run compress [--param k=v ...] [--recipe FILE]      run locally (kfp.local)
    idap pipeline submit [compress] --host URL [--param ...] [--recipe FILE] [--experiment NAME]
    idap pipeline schedule [compress] --host URL --cron EXPR [--max-concurrency N] [--name NAME] ...

User errors end with one line naming the problem and exit code 2.

Console output: ``idap pipeline run`` shows one line per step and a summary table, the full logs going to
a file under ``$IDAP_WORKDIR/logs`` (``pipelines.console``); ``--quiet`` drops the live progress line,
``--verbose`` shows everything. ``idap compress`` prints its steps and the summary table, ``--quiet``
without progress bars, ``--verbose`` with MLflow's own log lines. Every long-running command (``idap
tune`` too) takes the same ``--quiet`` / ``--verbose`` pair with these meanings.
"""

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

from components.services import mlflow_backend, promotion, registry, sources, storage, tracking
from components.services.artifacts import effective_recipe
from components.services.ray_connect import SearchError
from components.services.ray_train import DataParallelError
from components.services.settings import SettingsError, load_settings
from idap import cli as idap_cli
from idap.cli import log
from idap.report.files import summary_lines
from pipelines import kfp_client
from pipelines._cli_args import PipelineError, positive_int
from pipelines.parallel_cli import add_workers, data_parallel
from pipelines.parameters import PIPELINES, load_pipeline, pipeline_arguments
from pipelines.tune_cli import add_tune_parser

# Pipeline parameters that override recipe fields (components.services.artifacts.effective_recipe).


EDGE_ERRORS = (*idap_cli.USER_ERRORS, SettingsError, PipelineError, kfp_client.CronError, kfp_client.KfpError,
               mlflow_backend.TrackingError, sources.SourceError, SearchError, DataParallelError)


# ---- pipeline commands -------------------------------------------------------------------------
def cmd_compile(args: argparse.Namespace) -> int:
    from kfp import compiler

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in sorted(PIPELINES):
        path = out / f"{name}.yaml"
        compiler.Compiler().compile(load_pipeline(name), str(path))
        print(path)
    return 0


def run_local(name: str, arguments: dict, *, log_path: Path | None = None, verbose: bool = True,
              quiet: bool = False) -> dict:
    """Run a pipeline on this machine with ``kfp.local`` (one subprocess per step, this venv).

    Args:
        log_path: where kfp's and every step's full output goes (``pipelines.console.StepConsole``); the
            console then shows one line per step (``verbose`` false) or everything (``verbose``).
            None: kfp prints as it does by itself.

    Returns:
        ``{"outputs": {name: path or value}, "pipeline_root", "tracking_uri", "seconds", "steps"}``; ``steps``
        is what each step did (``StepConsole.done``) when ``log_path`` is given.
    """
    from kfp import local

    from pipelines._platform import without_retries
    from pipelines.console import StepConsole

    pipeline = load_pipeline(name)
    settings = load_settings()
    settings.workdir.mkdir(parents=True, exist_ok=True)
    # the steps are subprocesses: they must find the same work directory and tracking store
    os.environ["IDAP_WORKDIR"] = str(settings.workdir)
    os.environ["MLFLOW_TRACKING_URI"] = settings.tracking_uri
    # the long steps' tqdm bars reach the log through a pipe, one line per redraw: at most one a second
    os.environ.setdefault("TQDM_MININTERVAL", "1")
    root = settings.workdir / "kfp"
    started = time.perf_counter()
    console = contextlib.nullcontext()
    if log_path is not None:
        console = StepConsole(log_path, total_steps=len(pipeline.pipeline_spec.root.dag.tasks),
                              stages={"prune-filters": _filter_steps(arguments)}, verbose=verbose, quiet=quiet)
    with console, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
        # kfp.local honours the cluster's retry policies (3 attempts, minutes of backoff on a failing step)
        task = without_retries(pipeline)(**arguments)
    outputs = {k: getattr(v, "path", v) for k, v in task.outputs.items()}
    return {"outputs": outputs, "pipeline_root": str(root), "tracking_uri": settings.tracking_uri,
            "seconds": round(time.perf_counter() - started, 1), "steps": getattr(console, "done", [])}


def _filter_steps(arguments: dict) -> int | None:
    """Stage 1's number of steps in the recipe the run is given, for the prune-filters progress bar."""
    with contextlib.suppress(Exception):
        return effective_recipe(arguments.get("recipe_json") or "").filter.steps
    return None


def tracking_ui_hint(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri}"


def cmd_run(args: argparse.Namespace) -> int:
    """Run a pipeline locally: one line per step on the console (everything with --verbose), the full logs
    in a file under $IDAP_WORKDIR/logs, and at the end the report's summary table and the registry decision."""
    pipeline = load_pipeline(args.name)
    arguments = pipeline_arguments(pipeline, args.params, args.recipe)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the steps are subprocesses: torch reads it at start
    log_path = load_settings().workdir / "logs" / f"{args.name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    shown = {k: (v if k != "recipe_json" else f"<{len(v)} chars>") for k, v in arguments.items()}
    log(f"running pipeline {pipeline.name} locally with {json.dumps(shown)[:300]}")
    log(f"full log: {log_path}")
    try:
        result = run_local(args.name, arguments, log_path=log_path, verbose=args.verbose, quiet=args.quiet)
    except RuntimeError as exc:  # kfp.local: "Pipeline ... finished with status FAILURE. Inner task failed: ..."
        log(f"error: {_plain(str(exc))} (the failing step's last lines are above; full log: {log_path})")
        return 1
    out = result["outputs"]
    lines = [f"pipeline {pipeline.name} finished in {result['seconds']:.0f} s"]
    report = _step_report(out)
    if report is not None:
        lines += summary_lines(report)
    if "registration" in out:
        reg = json.loads(out["registration"])
        lines.append(f"registered: {reg.get('name')} version {reg.get('version')} "
                     f"({reg.get('decision')}: {reg.get('reason')})")
    if "model" in out:
        lines.append(f"compressed model (bundle): {out['model']}")
    if "report" in out:
        lines.append(f"report: {out['report']}")
    lines.append(f"all step outputs: {result['pipeline_root']}")
    lines.append(f"full log: {log_path}")
    lines.append(f"tracking UI: {tracking_ui_hint(result['tracking_uri'])}")
    print("\n".join(lines), flush=True)
    return 0


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _step_report(outputs: dict) -> dict | None:
    """report.json beside the pipeline's Markdown report output (the evaluate step's ``report_json``)."""
    if "report" not in outputs:
        return None
    path = Path(outputs["report"]).with_name("report_json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cmd_submit(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args.name)
    arguments = pipeline_arguments(pipeline, args.params, args.recipe)
    result = kfp_client.submit(pipeline, host=args.host, arguments=arguments, experiment=args.experiment,
                               run_name=args.run_name, namespace=args.namespace,
                               service_account=args.service_account)
    print(json.dumps(result, indent=2))
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    pipeline = load_pipeline(args.name)
    cron = kfp_client.normalize_cron(args.cron)  # before compiling anything
    arguments = pipeline_arguments(pipeline, args.params, args.recipe)
    result = kfp_client.schedule(pipeline, host=args.host, cron=cron, arguments=arguments,
                                 name=args.schedule_name or f"{pipeline.name} {cron}", experiment=args.experiment,
                                 max_concurrency=args.max_concurrency, namespace=args.namespace,
                                 service_account=args.service_account)
    print(json.dumps(result, indent=2))
    return 0


# ---- tracked compress and promotion ------------------------------------------------------------
def cmd_compress(args: argparse.Namespace) -> int:
    """``idap compress`` with s3:// inputs resolved and, unless --no-track, an MLflow run around it; with
    --register NAME the compressed model is registered and promoted by rule, as the pipeline does."""
    settings = load_settings()
    if args.register and args.no_track:
        raise PipelineError("--register needs tracking: drop --no-track")
    promotion.check_rule_args(args.promote_objective, args.promote_tolerance_pp)  # before hours of compression
    _quiet_loggers(args.verbose)
    opts = idap_cli.CompressOptions.from_args(args)
    if opts.model_dir and storage.is_s3(opts.model_dir):  # the run reads local copies; params keep the URIs
        opts = replace(opts, model_dir=str(storage.resolve_input(opts.model_dir, settings.workdir)))
    # s3:// datasets and dataset specs whose source is on s3:// are fetched (cached by content), as in the pipeline
    opts = replace(opts, dataset=sources.resolve_dataset(opts.dataset, settings.workdir))
    if args.no_track:
        out, report, _ = idap_cli.run_compress(opts)
        log("\n".join(summary_lines(report)))
        print(json.dumps({"out": str(out), **report["ratios"], "test_acc": report["compressed"]["test_acc"]}))
        return 0
    mlflow_backend.configure(settings)
    params = {"model": args.model_dir or args.model, "dataset": args.dataset, "out": args.out}
    registration = None
    with tracking.step_run(None, "compress", params=params) as tracker:
        out, report, result = idap_cli.run_compress(opts, on_step=tracker.on_step, on_plan=tracker.log_plan)
        tracker.log_recipe(result.recipe)
        tracker.log_dataset(report["dataset"])
        tracker.log_report(report, out)  # metrics, verdict tags, report files under report/
        for item in sorted(out.iterdir()):  # the rest once, under compress/ (the report files are in report/)
            if not item.name.startswith("report.") and item.suffix != ".png":
                tracker.log_artifacts(item, f"compress/{item.name}" if item.is_dir() else "compress")
        if args.register:
            base = args.model_dir or f"{args.model} trained by idap compress ({args.train_epochs:g} epochs, " \
                                     f"seed {result.recipe.seed})"
            registration = registry.register_and_promote(
                parent_run_id=tracker.run_id, model_dir=out / "model", dense_dir=opts.model_dir or out / "dense",
                report=report, recipe=result.recipe, dataset=report["dataset"], registered_name=args.register,
                base_model=base, objective=args.promote_objective, tolerance_pp=args.promote_tolerance_pp)
            tracker.set_tags({"idap.registered_model": registration["name"],
                              "idap.registered_version": registration["version"],
                              "idap.promotion": registration["decision"],
                              "idap.promotion_reason": registration["reason"]})
        tracker.set_tags({"mlflow.note.content": tracking.summary_markdown(report, result.recipe, registration)})
        run_id = tracker.run_id
    lines = summary_lines(report)
    if registration:
        lines.append(f"registered: {registration['name']} version {registration['version']} "
                     f"({registration['decision']}: {registration['reason']})")
    log("\n".join(lines))
    summary = {"out": str(out), **report["ratios"], "test_acc": report["compressed"]["test_acc"],
               "target_met": report.get("target_met"), "mlflow_run_id": run_id}
    if registration:
        summary["registration"] = {k: registration[k] for k in ("name", "version", "decision", "champion")}
    print(json.dumps(summary))
    return 0


def _quiet_loggers(verbose: bool) -> None:
    """MLflow's and its database layer's INFO lines (table creation, system metrics) only with --verbose."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def cmd_import(args: argparse.Namespace) -> int:
    """``idap import`` with remote sources: ``models:/NAME/VERSION`` / ``models:/NAME@ALIAS`` (the registered
    version's bundle artifact, never its pyfunc) and s3:// bundles or weights, downloaded into the work dir."""
    from idap.cli.import_cmd import cmd_import as import_command

    settings = load_settings()
    if sources.is_registry_uri(args.source_model) or storage.is_s3(args.source_model):
        args.source_origin = args.source_model
        args.source_model = str(sources.resolve_model_source(args.source_model, settings.workdir))
    if args.weights and storage.is_s3(args.weights):
        args.weights = str(storage.resolve_input(args.weights, settings.workdir))
    return import_command(args)


def cmd_promote(args: argparse.Namespace) -> int:
    mlflow_backend.configure()
    print(json.dumps(registry.promote(args.name, args.version, force=args.force, reason=args.reason), indent=2))
    return 0


# ---- parser ------------------------------------------------------------------------------------
def _add_arguments(p: argparse.ArgumentParser, *, name_optional: bool) -> None:
    if name_optional:
        p.add_argument("name", nargs="?", default="compress", help=f"pipeline: one of {sorted(PIPELINES)}")
    else:
        p.add_argument("name", help=f"pipeline: one of {sorted(PIPELINES)}")
    p.add_argument("--param", dest="params", action="append", default=[], metavar="NAME=VALUE",
                   help="a pipeline parameter (repeatable); unknown names are refused with the valid list")
    p.add_argument("--recipe", default=None, help="YAML recipe, passed as the recipe_json parameter")


def _add_remote(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", required=True, help="Kubeflow Pipelines API URL; token from $KFP_TOKEN")
    p.add_argument("--experiment", default="idap", help="KFP experiment (created when missing)")
    p.add_argument("--namespace", default=None, help="Kubernetes namespace (multi-user Kubeflow)")
    p.add_argument("--service-account", default=None,
                   help="service account of the run's pods, e.g. idap-pipeline-runner from infra/ (default: the "
                        "cluster's, on multi-user Kubeflow the Profile's)")


def build_parser() -> argparse.ArgumentParser:
    parser = idap_cli.build_parser()
    sub = parser.commands

    compress = sub.choices["compress"]
    compress.add_argument("--no-track", action="store_true", help="do not log the run to MLflow")
    compress.add_argument("--verbose", action="store_true", help="also MLflow's own log lines (database setup...)")
    compress.add_argument("--register", default=None, metavar="NAME",
                          help="register the compressed model in MLflow as NAME and promote it by rule")
    compress.add_argument("--promote-objective", choices=promotion.OBJECTIVES, default="latency",
                          help="with --register: what a new champion must beat the current one on")
    compress.add_argument("--promote-tolerance-pp", type=float, default=0.1,
                          help="with --register: test accuracy slack (pp) for the latency / macs objectives")
    compress.set_defaults(func=cmd_compress)
    for name in ("train", "compress", "import"):  # import: its --fine-tune
        add_workers(sub.choices[name])

    sub.choices["import"].set_defaults(func=cmd_import)  # adds models:/ and s3:// sources

    p = sub.add_parser("promote", help="alias a registered model version as champion (MLflow)")
    p.add_argument("--name", required=True, help="registered model name")
    p.add_argument("--version", required=True, help="version to promote")
    p.add_argument("--force", action="store_true", help="promote even if the rule says no")
    p.add_argument("--reason", default="manual", help="recorded with the promotion")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("pipeline", help="Kubeflow pipelines: compile, run locally, submit, schedule")
    psub = p.add_subparsers(dest="pipeline_command", required=True)
    c = psub.add_parser("compile", help="write the IR YAML of every pipeline")
    c.add_argument("--out", default="build/pipelines")
    c.set_defaults(func=cmd_compile)
    r = psub.add_parser("run", help="run a pipeline on this machine (kfp.local, subprocesses)")
    _add_arguments(r, name_optional=False)
    r.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads of every step (OMP_NUM_THREADS; default: torch's choice)")
    loud = r.add_mutually_exclusive_group()
    loud.add_argument("--quiet", action="store_true", help="step lines and the summary only, no live progress line")
    loud.add_argument("--verbose", action="store_true", help="every step's full output on the console too")
    r.set_defaults(func=cmd_run)
    s = psub.add_parser("submit", help="start a run on a Kubeflow Pipelines cluster")
    _add_arguments(s, name_optional=True)
    _add_remote(s)
    s.add_argument("--run-name", default=None)
    s.set_defaults(func=cmd_submit)
    s = psub.add_parser("schedule", help="create a recurring run on a Kubeflow Pipelines cluster")
    _add_arguments(s, name_optional=True)
    _add_remote(s)
    s.add_argument("--cron", required=True, help="5 fields, or 6 with seconds first (Kubeflow's form)")
    s.add_argument("--max-concurrency", type=int, default=1)
    s.add_argument("--name", dest="schedule_name", default=None, help="recurring run name")
    s.set_defaults(func=cmd_schedule)
    add_tune_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with data_parallel(args):
            return idap_cli.run(args)  # --threads, and the library's user errors as one line
    except EDGE_ERRORS as exc:
        log(f"error: {type(exc).__name__}: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
