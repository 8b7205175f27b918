"""Pipeline step 2: the dense baseline, trained from scratch or imported from a bundle: a path, an s3:// URI or a
registered version (``models:/NAME/VERSION``, ``models:/NAME@ALIAS``: its bundle artifact, never its pyfunc)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.services.artifacts import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def train_baseline(
    data: Input[Dataset],
    model_name: str,
    epochs: float,
    base_model_uri: str,
    recipe_json: str,
    parent_run_id: str,
    dense: Output[Model],
    metrics: Output[Metrics],
):
    """``base_model_uri`` "" trains ``model_name`` for ``epochs`` with the recipe's seed (as ``idap compress
    --model`` does); otherwise the bundle there is the baseline."""
    from components.services import artifacts, mlflow_backend, sources, tracking
    from idap.bundle import load_bundle
    from idap.cli import train_dense
    from idap.data import load_splits
    from idap.report import evaluate_model

    settings = mlflow_backend.configure()
    recipe = artifacts.recipe_from_json(recipe_json)
    splits = load_splits(data.path)
    params = {"model": model_name, "epochs": epochs, "base_model_uri": base_model_uri}
    with tracking.step_run(parent_run_id, "train_baseline", params=params) as t:
        if base_model_uri:
            model = load_bundle(sources.resolve_model_source(base_model_uri, settings.workdir))
            artifacts.check_fits(model, splits, base_model_uri)
            figures = evaluate_model(model, splits)
        else:
            # the bar's lines go to the step's log; the console shows them as one live line on a terminal
            model, figures = train_dense(model_name, splits, epochs=epochs, seed=recipe.seed, device=recipe.device,
                                         progress=True)
        source = base_model_uri or f"{model_name} trained by the pipeline ({epochs:g} epochs, seed {recipe.seed})"
        artifacts.save_model(model, dense, splits, recipe={"train_epochs": epochs},
                              metadata={"metrics": figures, "source": source})
        headline = {key: float(figures[key]) for key in ("val_acc", "test_acc", "params", "macs")}
        for key, value in headline.items():
            metrics.log_metric(key, value)
        t.log_metrics(headline)
        print(f"dense baseline ({source}): val {figures['val_acc']:.2f}% test {figures['test_acc']:.2f}%", flush=True)
