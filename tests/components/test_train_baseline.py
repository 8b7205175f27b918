"""train_baseline: trains like `idap compress --model` (recipe seed), or imports a given bundle unchanged."""

import json

import pytest
import torch
from kfp import dsl

from components.services.artifacts import recipe_from_json
from components.train_baseline import train_baseline
from idap.bundle import load_bundle, read_bundle_info, save_bundle
from idap.data import load_splits
from idap.dense.baseline import train_dense
from idap.models import create_model

from .conftest import TRAIN_EPOCHS


def test_trained_baseline_equals_train_dense_with_the_recipe_seed(chain):
    recipe = recipe_from_json(chain.recipe_json)
    splits = load_splits(chain.out["data"].path)
    expected, figures = train_dense("cnn_small", splits, epochs=TRAIN_EPOCHS, seed=recipe.seed, device="cpu",
                                    progress=False)
    dense = load_bundle(chain.out["dense"].path)
    assert torch.equal(dense(splits.test_x), expected(splits.test_x))
    metrics = chain.out["baseline_metrics"].metadata
    assert metrics["val_acc"] == figures["val_acc"] and metrics["params"] == figures["params"]
    info = read_bundle_info(chain.out["dense"].path)
    assert info["recipe"] == {"train_epochs": TRAIN_EPOCHS}
    assert "trained by the pipeline" in info["metadata"]["source"]


def test_base_model_uri_imports_the_bundle_unchanged(chain, tmp_path):
    splits = load_splits(chain.out["data"].path)
    dense, metrics = dsl.Model(uri=str(tmp_path / "dense")), dsl.Metrics(uri=str(tmp_path / "metrics"))
    train_baseline.python_func(data=chain.out["data"], model_name="ignored", epochs=99.0,
                               base_model_uri=chain.out["dense"].path, recipe_json=chain.recipe_json,
                               parent_run_id="", dense=dense, metrics=metrics)
    a, b = load_bundle(chain.out["dense"].path), load_bundle(dense.path)
    assert torch.equal(a(splits.val_x), b(splits.val_x))
    assert metrics.metadata["val_acc"] == chain.out["baseline_metrics"].metadata["val_acc"]
    assert json.loads((tmp_path / "dense" / "metadata.json").read_text())["source"] == chain.out["dense"].path


def test_base_model_for_other_classes_is_refused(chain, tmp_path):
    save_bundle(create_model("cnn_small", 3, 1, 8), tmp_path / "three", input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="3 classes"):
        train_baseline.python_func(data=chain.out["data"], model_name="cnn_small", epochs=1.0,
                                   base_model_uri=str(tmp_path / "three"), recipe_json=chain.recipe_json,
                                   parent_run_id="", dense=dsl.Model(uri=str(tmp_path / "d")),
                                   metrics=dsl.Metrics(uri=str(tmp_path / "m")))


def test_base_model_uri_from_the_registry(chain, tmp_path):
    """models:/NAME/VERSION: the version the chain registered, read as its bundle artifact (never its pyfunc)."""
    reg = chain.out["registration"]
    uri = f"models:/{reg['name']}/{reg['version']}"
    dense, metrics = dsl.Model(uri=str(tmp_path / "dense")), dsl.Metrics(uri=str(tmp_path / "metrics"))
    train_baseline.python_func(data=chain.out["data"], model_name="ignored", epochs=99.0, base_model_uri=uri,
                               recipe_json=chain.recipe_json, parent_run_id="", dense=dense, metrics=metrics)
    splits = load_splits(chain.out["data"].path)
    registered, imported = load_bundle(chain.out["final"].path), load_bundle(dense.path)
    assert torch.equal(registered(splits.val_x), imported(splits.val_x))
    assert json.loads((tmp_path / "dense" / "metadata.json").read_text())["source"] == uri
