"""Every registered model: compress -> forward -> fewer params and MACs -> bundle round trip with equal outputs."""

import pytest
import torch

from idap.bundle import load_bundle, save_bundle
from idap.measure.metrics import count_macs, count_params
from idap.models import create_model, list_models
from idap.prune.compress import compress
from idap.prune.config import Recipe

HEAVY = {"densenet121", "convnext_tiny", "resnet50", "efficientnet_b0", "vgg16_bn", "resnet56"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in list_models()]
)
def test_every_model_compresses_and_round_trips(name, digits, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, digits.num_classes, digits.in_channels, digits.image_size)
    recipe = Recipe.from_dict({
        "max_accuracy_drop": 100.0, "calibration_size": 64, "device": "cpu",
        "filter": {"steps": 1, "p0": 0.3},
        "layer": {"max_removals": 1, "epsilon": 100.0},
        "recovery": {"step_budget": 1, "final_budget": 1, "batch_size": 16},
    })
    result = compress(model, digits, recipe)
    small = result.model
    shape = (digits.in_channels, digits.image_size, digits.image_size)
    x = digits.test_x[:4]
    assert small(x).shape == (4, digits.num_classes)
    assert count_params(small) < count_params(model)
    assert count_macs(small, shape) < count_macs(model, shape)
    save_bundle(small, tmp_path / "b", input_shape=shape, recipe=recipe.to_dict())
    loaded = load_bundle(tmp_path / "b")
    with torch.no_grad():
        assert (loaded(x) - small.eval()(x)).abs().max() <= 1e-5
