"""Pipeline step 3: the dense model's divergence profile (per-layer channel flow scores, block scores)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from components.services.artifacts import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def score_divergence(
    data: Input[Dataset],
    dense: Input[Model],
    recipe_json: str,
    parent_run_id: str,
    profile: Output[Artifact],
    profile_view: Output[Markdown],
):
    """One calibration pass over the dense model: ``FlowProfile.to_json()`` plus the dense figures
    (validation accuracy, params, MACs) that every later step compares against."""
    import tempfile
    import time

    from components.services import artifacts, tracking
    from idap.bundle import load_bundle
    from idap.data import load_splits
    from idap.prune.compress import dense_profile
    from idap.prune.state import RunContext

    recipe = artifacts.recipe_from_json(recipe_json)
    splits = load_splits(data.path)
    model = load_bundle(dense.path)
    with tracking.step_run(parent_run_id, "score_divergence") as t:
        ctx = RunContext.create(model, splits, recipe)
        started = time.perf_counter()
        doc = dense_profile(model, ctx).to_json()
        # the scoring pass's seconds: the prune step's time plan reuses them instead of scoring once more
        doc["dense"] = {"val_acc": ctx.dense_val_acc, "params": ctx.dense_params, "macs": ctx.dense_macs,
                        "scoring_seconds": round(time.perf_counter() - started, 3)}
        artifacts.write_json(profile.path, doc)
        profile.metadata.update({"layers": len(doc["layers"]), "blocks": len(doc["blocks"]), "samples": doc["samples"]})
        with tempfile.TemporaryDirectory() as tmp:
            with open(profile_view.path, "w") as fh:
                fh.write(artifacts.profile_markdown(doc, tmp))
            artifacts.write_json(f"{tmp}/divergence_profile.json", doc)
            t.log_artifacts(tmp, "profile")
        print(f"profile: {len(doc['layers'])} layers, {len(doc['blocks'])} blocks, dense val "
              f"{ctx.dense_val_acc:.2f}%", flush=True)
