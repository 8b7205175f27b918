
"""score_divergence: the profile artifact rebuilds exactly the FlowProfile stage 1 would compute."""

import torch

from components.services.artifacts import profile_json, read_json, recipe_from_json
from idap.bundle import load_bundle
from idap.data import load_splits
from idap.prune.compress import dense_profile
from idap.prune.divergence import FlowProfile
from idap.prune.state import RunContext


def test_profile_round_trips_exactly(chain):
    splits = load_splits(chain.out["data"].path)
    dense = load_bundle(chain.out["dense"].path)
    ctx = RunContext.create(dense, splits, recipe_from_json(chain.recipe_json))
    expected = dense_profile(dense, ctx)
    doc = read_json(chain.out["profile"].path)
    rebuilt = FlowProfile.from_json(doc)
    assert profile_json(doc) == expected.to_json()
    assert list(rebuilt.channel) == list(expected.channel)
    for name, scores in expected.channel.items():
        assert rebuilt.channel[name].dtype == scores.dtype and torch.equal(rebuilt.channel[name], scores)
    assert rebuilt.blocks == expected.blocks and rebuilt.samples == expected.samples
    scoring = doc["dense"].pop("scoring_seconds")  # the pass's time, for the prune step's time plan
    assert doc["dense"] == {"val_acc": ctx.dense_val_acc, "params": ctx.dense_params, "macs": ctx.dense_macs}
    assert isinstance(scoring, float) and scoring > 0


def test_profile_view_is_a_table_with_the_plot_embedded(chain):
    text = open(chain.out["profile_view"].path).read()
    doc = read_json(chain.out["profile"].path)
    assert "| layer | channels |" in text
    assert all(f"`{layer['name']}`" in text for layer in doc["layers"])
    assert "](data:image/png;base64,iVBOR" in text and ".png)" not in text
