"""Pipeline step 7: dense vs compressed, measured (accuracy, params, MACs, latency), and the report."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components.services.artifacts import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def evaluate(
    data: Input[Dataset],
    dense: Input[Model],
    model: Input[Model],
    trajectory: Input[Artifact],
    profile: Input[Artifact],
    recipe_json: str,
    parent_run_id: str,
    measure_latency: bool,
    metrics: Output[Metrics],
    report: Output[Markdown],
    report_json: Output[Artifact],
):
    """The ``idap compress`` report from the steps' artifacts: report.json, and report.md with its plots
    embedded so the Kubeflow UI shows them."""
    import shutil
    import tempfile
    from pathlib import Path

    from components.services import artifacts, summaries, tracking
    from idap.bundle import load_bundle
    from idap.data import load_splits
    from idap.prune.state import RunState, StepRecord
    from idap.prune.timing import time_summary
    from idap.report import compression_report
    from idap.report.files import write_report

    recipe = artifacts.recipe_from_json(recipe_json)
    splits = load_splits(data.path)
    doc = artifacts.read_json(trajectory.path)  # the run state (or, from an older run, its bare trajectory)
    state = RunState.from_json(doc) if isinstance(doc, dict) else None
    records = state.trajectory if state is not None else [StepRecord(**s) for s in doc]
    steps = [s.to_json() for s in records]
    plan = state.time_plan if state is not None else None
    with tracking.step_run(parent_run_id, "evaluate", params={"measure_latency": measure_latency}) as t:
        result = compression_report(
            load_bundle(dense.path), load_bundle(model.path), splits, recipe=recipe.to_dict(), steps=steps,
            profile=artifacts.profile_json(artifacts.read_json(profile.path)), latency=measure_latency,
            extra={"compress_seconds": round(sum(s["seconds"] for s in steps), 1),
                   "time": time_summary(plan, state.time_spent if plan else 0.0, records)})
        with tempfile.TemporaryDirectory() as tmp:
            paths = write_report(result, tmp)
            Path(report.path).write_text(artifacts.embed_images(paths["markdown"].read_text(), tmp))
            shutil.copyfile(paths["json"], report_json.path)
            t.log_report(result, tmp)
        for key, value in summaries.report_metrics(result).items():
            metrics.log_metric(key, value)
        r = result["ratios"]
        print(f"compressed: {r['macs_reduction']:.2f}x fewer MACs, {r['params_reduction']:.2f}x fewer params, "
              f"val drop {r['val_acc_drop_pp']:.2f} pp, test {result['compressed']['test_acc']:.2f}%", flush=True)
