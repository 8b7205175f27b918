"""The shared helpers: recipe overrides, image embedding, names."""

import base64

import pytest

from components.services.artifacts import (
    default_registered_name,
    effective_recipe,
    embed_images,
    recipe_from_json,
    recipe_param,
)
from idap.prune.config import ConfigError, Recipe


def test_negative_parameters_keep_the_recipe_and_zero_clears_a_target():
    base = recipe_param(Recipe(seed=3, max_accuracy_drop=2.0, target_macs_reduction=4.0))
    assert effective_recipe(base) == Recipe.from_dict(recipe_from_json(base).to_dict())
    r = effective_recipe(base, seed=7, max_accuracy_drop=0.5, target_macs_reduction=0, target_params_reduction=2)
    assert (r.seed, r.max_accuracy_drop, r.target_macs_reduction, r.target_params_reduction) == (7, 0.5, None, 2.0)
    assert effective_recipe("").max_accuracy_drop == Recipe().max_accuracy_drop


def test_the_time_budget_parameter_sets_the_recipes_and_empty_keeps_it():
    base = recipe_param(Recipe.from_dict({"recovery": {"time_budget": "1h"}}))
    assert effective_recipe(base).recovery.time_budget == 3600.0
    assert effective_recipe(base, time_budget="20m").recovery.time_budget == 1200.0
    with pytest.raises(ConfigError, match="recovery.time_budget"):
        effective_recipe(base, time_budget="later")


@pytest.mark.parametrize("text, match", [("{", "not valid JSON"), ("[1]", "JSON object"),
                                         ('{"filter": {"p0": 2}}', "filter.p0")])
def test_bad_recipe_json_is_a_config_error(text, match):
    with pytest.raises(ConfigError, match=match):
        recipe_from_json(text)


def test_embed_images_inlines_existing_pngs_only(tmp_path):
    png = b"\x89PNG-bytes"
    (tmp_path / "a.png").write_bytes(png)
    out = embed_images("![A](a.png) and ![B](missing.png)", tmp_path)
    assert f"![A](data:image/png;base64,{base64.b64encode(png).decode()})" in out
    assert "![B](missing.png)" in out


def test_default_registered_name():
    assert default_registered_name("cnn_small", "fashion-mnist") == "idap-cnn_small-fashion-mnist"
    assert default_registered_name("resnet20", "/data/my set/train.npz") == "idap-resnet20-train"
