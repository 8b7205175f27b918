"""The ``idap`` console script: the library's commands plus what only the edge can do.

``idap.cli`` is the plain-PyTorch CLI; this module builds its parser and adds MLflow tracking to
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
import importlib
import json
import logging
import os
import re
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

from components import _mlflow, _promotion, _registry, _sources, _storage, _tracking
from components._artifacts import effective_recipe, recipe_param
from components._settings import SettingsError, load_settings
from idap import cli as idap_cli
from idap.cli import log
from idap.config import Recipe
from idap.report_files import summary_lines
from pipelines import kfp_client

# Pipelines by name, imported on use so that a later one (a Ray Tune search) costs nothing until run.
PIPELINES = {"compress": "pipelines.compress:compress_pipeline", "tune": "pipelines.tune:tune_pipeline"}
# Pipeline parameters that override recipe fields (components._artifacts.effective_recipe).
RECIPE_OVERRIDES = ("seed", "max_accuracy_drop", "target_macs_reduction", "target_params_reduction")


class PipelineError(ValueError):
    """A pipeline name or parameter the user gave is not valid."""


EDGE_ERRORS = (*idap_cli.USER_ERRORS, SettingsError, PipelineError, kfp_client.CronError, kfp_client.KfpError,
               _mlflow.TrackingError, _sources.SourceError)


# ---- pipelines and their parameters ------------------------------------------------------------
def load_pipeline(name: str):
    if name not in PIPELINES:
        raise PipelineError(f"unknown pipeline {name!r}; valid: {sorted(PIPELINES)}")
    module, attr = PIPELINES[name].split(":")
    return getattr(importlib.import_module(module), attr)


def pipeline_parameters(pipeline) -> dict[str, tuple[str, object]]:
    """``{name: (type, default)}`` of a pipeline's parameters (type: String, Integer, Float, Boolean)."""
    return {name: (spec.type, spec.default) for name, spec in pipeline.component_spec.inputs.items()}


def _typed(name: str, kind: str, raw: str):
    try:
        if kind == "Integer":
            return int(raw)
        if kind == "Float":
            return float(raw)
        if kind == "Boolean":
            if raw.lower() in ("true", "1", "yes"):
                return True
            if raw.lower() in ("false", "0", "no"):
                return False
            raise ValueError(raw)
    except ValueError:
        raise PipelineError(f"parameter {name} must be {kind.lower()}, got {raw!r}") from None
    return raw


def pipeline_arguments(pipeline, params: list[str], recipe_file: str | None) -> dict:
    """``--param k=v`` (typed by the pipeline's signature) and ``--recipe FILE``, checked before anything runs."""
    spec = pipeline_parameters(pipeline)
    arguments: dict = {}
    for item in params:
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise PipelineError(f"--param {item!r} must look like name=value")
        if key not in spec:
            raise PipelineError(f"unknown parameter {key!r} for pipeline {pipeline.name}; valid: {sorted(spec)}")
        arguments[key] = _typed(key, spec[key][0], raw)
    if recipe_file:
        if "recipe_json" in arguments:
            raise PipelineError("give the recipe either as --recipe FILE or as --param recipe_json=..., not both")
        arguments["recipe_json"] = recipe_param(Recipe.from_yaml(recipe_file))
    if "recipe_json" in spec:  # fail here, not three steps into a run, on a bad recipe or override
        values = {k: arguments.get(k, spec[k][1]) for k in spec}
        overrides = {k: values[k] for k in RECIPE_OVERRIDES if values.get(k) is not None}
        recipe = effective_recipe(values["recipe_json"] or "", **overrides)
        if "search_space" in spec:
            check_search_space(values, recipe)
    return arguments


def check_search_space(values: dict, recipe: Recipe) -> None:
    """The tune pipeline's search space against its recipe, as its search step will read them (``idap tune``
    checks the same way): a bad space fails before any step, MLflow run or Ray starts."""
    from components._search_space import SearchSpace

    space = SearchSpace.load(values.get("search_space") or "").with_settings(
        objective=values.get("objective") or None, reduction=values.get("reduction") or None,
        num_samples=values.get("num_samples") or None)
    space.validate(recipe)


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
    _promotion.check_rule_args(args.promote_objective, args.promote_tolerance_pp)  # before hours of compression
    _quiet_loggers(args.verbose)
    opts = idap_cli.CompressOptions.from_args(args)
    if opts.model_dir and _storage.is_s3(opts.model_dir):  # the run reads local copies; params keep the URIs
        opts = replace(opts, model_dir=str(_storage.resolve_input(opts.model_dir, settings.workdir)))
    # s3:// datasets and dataset specs whose source is on s3:// are fetched (cached by content), as in the pipeline
    opts = replace(opts, dataset=_sources.resolve_dataset(opts.dataset, settings.workdir))
    if args.no_track:
        out, report, _ = idap_cli.run_compress(opts)
        log("\n".join(summary_lines(report)))
        print(json.dumps({"out": str(out), **report["ratios"], "test_acc": report["compressed"]["test_acc"]}))
        return 0
    _mlflow.configure(settings)
    params = {"model": args.model_dir or args.model, "dataset": args.dataset, "out": args.out}
    registration = None
    with _tracking.step_run(None, "compress", params=params) as tracker:
        out, report, result = idap_cli.run_compress(opts, on_step=tracker.on_step)
        tracker.log_recipe(result.recipe)
        tracker.log_dataset(report["dataset"])
        tracker.log_report(report, out)  # metrics, verdict tags, report files under report/
        for item in sorted(out.iterdir()):  # the rest once, under compress/ (the report files are in report/)
            if not item.name.startswith("report.") and item.suffix != ".png":
                tracker.log_artifacts(item, f"compress/{item.name}" if item.is_dir() else "compress")
        if args.register:
            base = args.model_dir or f"{args.model} trained by idap compress ({args.train_epochs:g} epochs, " \
                                     f"seed {result.recipe.seed})"
            registration = _registry.register_and_promote(
                parent_run_id=tracker.run_id, model_dir=out / "model", dense_dir=opts.model_dir or out / "dense",
                report=report, recipe=result.recipe, dataset=report["dataset"], registered_name=args.register,
                base_model=base, objective=args.promote_objective, tolerance_pp=args.promote_tolerance_pp)
            tracker.set_tags({"idap.registered_model": registration["name"],
                              "idap.registered_version": registration["version"],
                              "idap.promotion": registration["decision"],
                              "idap.promotion_reason": registration["reason"]})
        tracker.set_tags({"mlflow.note.content": _tracking.summary_markdown(report, result.recipe, registration)})
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
    from idap import importing

    settings = load_settings()
    if _sources.is_registry_uri(args.source_model) or _storage.is_s3(args.source_model):
        args.source_origin = args.source_model
        args.source_model = str(_sources.resolve_model_source(args.source_model, settings.workdir))
    if args.weights and _storage.is_s3(args.weights):
        args.weights = str(_storage.resolve_input(args.weights, settings.workdir))
    return importing.cmd_import(args)


def cmd_promote(args: argparse.Namespace) -> int:
    _mlflow.configure()
    print(json.dumps(_registry.promote(args.name, args.version, force=args.force, reason=args.reason), indent=2))
    return 0


# ---- hyperparameter search -------------------------------------------------------------------
def cmd_tune(args: argparse.Namespace) -> int:
    """``idap tune``: a Ray Tune search over recipe settings (``components._tune``), tracked in MLflow.

    The space is checked against the recipe before anything loads; ``--resume`` continues an interrupted
    search from its experiment directory with the settings it started with.
    """
    from components import _ray_connect, _tune
    from components._search_space import SearchSpace
    from idap.bundle import load_bundle, save_bundle

    settings = load_settings()
    if args.resume:
        if not args.experiment_dir:
            raise PipelineError("--resume needs --experiment-dir (the directory of the interrupted search)")
        if args.submit:
            raise PipelineError("--resume continues a local search; a submitted job is not resumed: submit it again")
        exp_dir = Path(args.experiment_dir)
        state = _tune.read_state(exp_dir)
        space = SearchSpace.from_dict(state["space"], source=state.get("space_source", "search space"))
        base, sources = Recipe.from_dict(state["base_recipe"]), state["sources"]
    else:
        if not args.dataset:
            raise PipelineError("--dataset is required (unless --resume)")
        exp_dir = Path(args.experiment_dir or settings.workdir / "tune" / time.strftime("%Y%m%d-%H%M%S"))
        space = SearchSpace.load(args.search_space or "").with_settings(
            objective=args.objective, reduction=args.reduction, budget_pp=args.budget,
            num_samples=2 if args.smoke_test else args.num_samples)
        base = idap_cli.recipe_from_args(args)
        space.validate(base)  # a bad space fails here, before data, model or Ray
        try:
            _tune.check_new_experiment(exp_dir)
        except _ray_connect.SearchError as exc:
            log(f"error: {exc}")
            return 2
        limit = 512 if args.smoke_test else None
        sources = {"dataset": args.dataset, "data_root": args.data_root, "train_limit": args.train_limit or limit,
                   "test_limit": args.test_limit or limit, "model_dir": args.model_dir, "model": args.model,
                   "train_epochs": args.train_epochs}
    dataset = sources["dataset"]
    dataset = _sources.resolve_dataset(dataset, settings.workdir)
    data = idap_cli.load_data(dataset, root=sources["data_root"], train_limit=sources["train_limit"],
                              test_limit=sources["test_limit"], recipe=base)
    if sources.get("model_dir"):
        dense = load_bundle(_storage.resolve_input(sources["model_dir"], settings.workdir)
                            if _storage.is_s3(sources["model_dir"]) else sources["model_dir"])
    else:  # trained once and kept in the experiment directory, so --resume searches the same model
        log(f"no --model-dir: training a dense {sources['model']} for {sources['train_epochs']} epochs first")
        dense, _ = idap_cli.train_dense(sources["model"], data, epochs=sources["train_epochs"], seed=base.seed,
                                        device=base.device, progress=False)
        sources["model_dir"] = str(save_bundle(dense, exp_dir.absolute() / "dense", input_shape=(
            data.in_channels, data.image_size, data.image_size), recipe={"train_epochs": sources["train_epochs"]}))
    try:
        if args.submit:  # the whole search as a Ray job on the cluster (components/_ray_job)
            from components import _ray_job

            result = _ray_job.submit_search(
                args.submit, data=data, dense=dense, base=base, space=space, out_dir=exp_dir / "results",
                run_name=f"tune {Path(str(dataset)).name}", sources=sources, exchange=args.exchange,
                cpus_per_trial=args.cpus_per_trial, max_concurrent=args.max_concurrent, seed=args.search_seed,
                measure_latency=not args.no_latency, timeout_s=args.job_timeout,
                echo=None if args.quiet else _ray_job._stderr)
        else:
            result = _tune.run_search(
                data=data, dense=dense, base=base, space=space, experiment_dir=exp_dir, resume=args.resume,
                run_name=f"tune {Path(str(dataset)).name}", sources=sources, address=args.address,
                storage=args.storage, num_cpus=args.num_cpus, cpus_per_trial=args.cpus_per_trial,
                max_concurrent=args.max_concurrent, seed=args.search_seed, measure_latency=not args.no_latency,
                verbose=0 if args.quiet else 2 if args.verbose else 1)
    except _tune.SearchInterrupted as exc:
        log(f"interrupted: {exc}")
        return 130
    except _ray_connect.SearchError as exc:
        log(f"error: {type(exc).__name__}: {exc}")
        return 2
    w = result.winner
    print(json.dumps({"experiment_dir": str(result.experiment_dir), "mlflow_run_id": result.search_run_id,
                      "winner": w and {k: w.get(k) for k in ("trial_id", "config", "val_acc", "test_acc",
                                                             "macs_reduction", "params_reduction", "speedup_b1")},
                      "front": [t["trial_id"] for t in result.front], "best_recipe": str(result.files["best_recipe"]),
                      "trials": result.summary["trials"], "seconds": result.summary["seconds"]}, indent=2))
    return 0


def _add_tune_parser(sub) -> None:
    p = sub.add_parser("tune", help="search compression settings with Ray Tune -> Pareto front, best recipe")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model-dir", help="the dense bundle to compress (path or s3://)")
    src.add_argument("--model", default="cnn_small", help="no --model-dir: train this registered model first")
    p.add_argument("--train-epochs", type=float, default=3, help="with --model: epochs of the dense baseline")
    p.add_argument("--dataset", default=None, help="a builtin dataset, an ImageFolder dir, an .npz file or s3://")
    p.add_argument("--data-root", default=None, help="where datasets live (default: $IDAP_DATA_ROOT or ./data)")
    p.add_argument("--train-limit", type=int, default=None, help="subsample the training split (quick runs)")
    p.add_argument("--test-limit", type=int, default=None, help="subsample the test split (quick runs)")
    idap_cli.add_recipe_args(p)
    p.add_argument("--search-space", default=None, metavar="FILE",
                   help="YAML keyed by dotted recipe fields (default: recipes/search/default.yaml)")
    p.add_argument("--objective", choices=("constrained", "multi"), default=None,
                   help="constrained: max reduction within the budget (ASHA); multi: accuracy vs reduction front")
    p.add_argument("--reduction", choices=("macs", "params", "speedup"), default=None)
    p.add_argument("--budget", type=float, default=None, help="accuracy budget in pp (default: the recipe's Δ)")
    p.add_argument("--num-samples", type=_positive_int, default=None, help="trials (default: the space file's)")
    p.add_argument("--cpus-per-trial", type=_positive_int, default=1, help="CPUs (and torch threads) per trial")
    p.add_argument("--num-cpus", type=_positive_int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--max-concurrent", type=_positive_int, default=None, help="trials at once (default: as CPUs allow)")
    ray = p.add_mutually_exclusive_group()
    ray.add_argument("--address", default=None, help="drive trials on a Ray cluster, host:6379 or ray://host:10001 "
                     "(default: $RAY_ADDRESS, else local)")
    ray.add_argument("--submit", default=None, metavar="URL", help="run the whole search as a Ray job on the "
                     "cluster whose dashboard is URL (http://host:8265); inputs and results through S3")
    p.add_argument("--storage", default=None, help="Tune's trial storage, s3:// when trials run on other machines "
                   "than this one (default: beside --experiment-dir)")
    p.add_argument("--exchange", default=None, help="with --submit: s3:// prefix for the job's inputs and results "
                   "(default: s3://$IDAP_BUCKET/idap/search-jobs)")
    p.add_argument("--job-timeout", type=float, default=24 * 3600, help="with --submit: stop the job after this "
                   "many seconds (default: 24 h)")
    p.add_argument("--experiment-dir", default=None, help="Tune's experiment directory (default: .idap/tune/<time>)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted search in --experiment-dir")
    p.add_argument("--search-seed", type=int, default=0, help="seed of the Optuna sampler")
    p.add_argument("--no-latency", action="store_true", help="skip the post-search latency of the candidates")
    p.add_argument("--smoke-test", action="store_true", help="2 trials on 512 training samples: checks the setup")
    loud = p.add_mutually_exclusive_group()
    loud.add_argument("--quiet", action="store_true", help="no line per trial, only the result")
    loud.add_argument("--verbose", action="store_true", help="also Ray Tune's own tables and the trials' output")
    p.set_defaults(func=cmd_tune)


# ---- parser ------------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return int(text)


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
    compress.add_argument("--promote-objective", choices=_promotion.OBJECTIVES, default="latency",
                          help="with --register: what a new champion must beat the current one on")
    compress.add_argument("--promote-tolerance-pp", type=float, default=0.1,
                          help="with --register: test accuracy slack (pp) for the latency / macs objectives")
    compress.set_defaults(func=cmd_compress)

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
    r.add_argument("--threads", type=_positive_int, default=None,
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
    _add_tune_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return idap_cli.run(args)  # --threads, and the library's user errors as one line
    except EDGE_ERRORS as exc:
        log(f"error: {type(exc).__name__}: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
