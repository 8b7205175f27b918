"""``idap tune``: a Ray Tune search over compression settings (``components.services.tune``), tracked in MLflow;
``--submit`` runs it as a Ray job on a cluster (``components.services.ray_job``), ``--resume`` continues one.

Part of the ``idap`` console script (:mod:`pipelines.cli` adds the parser).
"""

import argparse
import json
import time
from pathlib import Path

from components.services import sources as _sources
from components.services import storage
from components.services.settings import load_settings
from idap import cli as idap_cli
from idap.cli import log
from idap.prune.config import Recipe
from pipelines._cli_args import PipelineError, positive_int


def cmd_tune(args: argparse.Namespace) -> int:
    """``idap tune``: a Ray Tune search over recipe settings (``components.services.tune``), tracked in MLflow.

    The space is checked against the recipe before anything loads; ``--resume`` continues an interrupted
    search from its experiment directory with the settings it started with.
    """
    from components.services import ray_connect, tune
    from components.services.search_space import SearchSpace
    from idap.bundle import load_bundle, save_bundle

    settings = load_settings()
    if args.resume:
        if not args.experiment_dir:
            raise PipelineError("--resume needs --experiment-dir (the directory of the interrupted search)")
        if args.submit:
            raise PipelineError("--resume continues a local search; a submitted job is not resumed: submit it again")
        exp_dir = Path(args.experiment_dir)
        state = tune.read_state(exp_dir)
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
            tune.check_new_experiment(exp_dir)
        except ray_connect.SearchError as exc:
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
        dense = load_bundle(storage.resolve_input(sources["model_dir"], settings.workdir)
                            if storage.is_s3(sources["model_dir"]) else sources["model_dir"])
    else:  # trained once and kept in the experiment directory, so --resume searches the same model
        log(f"no --model-dir: training a dense {sources['model']} for {sources['train_epochs']} epochs first")
        dense, _ = idap_cli.train_dense(sources["model"], data, epochs=sources["train_epochs"], seed=base.seed,
                                        device=base.device, progress=False)
        sources["model_dir"] = str(save_bundle(dense, exp_dir.absolute() / "dense", input_shape=(
            data.in_channels, data.image_size, data.image_size), recipe={"train_epochs": sources["train_epochs"]}))
    try:
        if args.submit:  # the whole search as a Ray job on the cluster (components/_ray_job)
            from components.services import ray_job

            result = ray_job.submit_search(
                args.submit, data=data, dense=dense, base=base, space=space, out_dir=exp_dir / "results",
                run_name=f"tune {Path(str(dataset)).name}", sources=sources, exchange=args.exchange,
                cpus_per_trial=args.cpus_per_trial, max_concurrent=args.max_concurrent, seed=args.search_seed,
                measure_latency=not args.no_latency, timeout_s=args.job_timeout,
                echo=None if args.quiet else ray_job._stderr)
        else:
            result = tune.run_search(
                data=data, dense=dense, base=base, space=space, experiment_dir=exp_dir, resume=args.resume,
                run_name=f"tune {Path(str(dataset)).name}", sources=sources, address=args.address,
                storage=args.storage, num_cpus=args.num_cpus, cpus_per_trial=args.cpus_per_trial,
                max_concurrent=args.max_concurrent, seed=args.search_seed, measure_latency=not args.no_latency,
                verbose=0 if args.quiet else 2 if args.verbose else 1)
    except tune.SearchInterrupted as exc:
        log(f"interrupted: {exc}")
        return 130
    except ray_connect.SearchError as exc:
        log(f"error: {type(exc).__name__}: {exc}")
        return 2
    w = result.winner
    print(json.dumps({"experiment_dir": str(result.experiment_dir), "mlflow_run_id": result.search_run_id,
                      "winner": w and {k: w.get(k) for k in ("trial_id", "config", "val_acc", "test_acc",
                                                             "macs_reduction", "params_reduction", "speedup_b1")},
                      "front": [t["trial_id"] for t in result.front], "best_recipe": str(result.files["best_recipe"]),
                      "trials": result.summary["trials"], "seconds": result.summary["seconds"]}, indent=2))
    return 0


def add_tune_parser(sub) -> None:
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
    p.add_argument("--num-samples", type=positive_int, default=None, help="trials (default: the space file's)")
    p.add_argument("--cpus-per-trial", type=positive_int, default=1, help="CPUs (and torch threads) per trial")
    p.add_argument("--num-cpus", type=positive_int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--max-concurrent", type=positive_int, default=None, help="trials at once (default: as CPUs allow)")
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
