import copy

import pytest
import torch
from torch import nn

from idap.measure.metrics import count_macs, count_params
from idap.models import create_model
from idap.models.prunable import block_candidates
from idap.prune.surgery import (
    SurgeryError,
    channel_floor,
    channel_groups,
    dependency_graph,
    prune_channels,
    prune_heads,
    remove_block,
)


def test_residual_groups_are_coupled_and_pruned_physically():
    m = create_model("resnet20", 10, 1, 8).eval()
    groups = {g.name: g for g in channel_groups(m, dependency_graph(m, (1, 8, 8)))}
    # the stem conv writes the first stage's residual stream: every conv writing into it is coupled
    stem = groups["conv1"]
    members = {type(layer).__name__ for layer, _, _ in stem.members()}
    assert members == {"Conv2d"} and len(list(stem.members())) > 1
    before_p, before_m = count_params(m), count_macs(m, (1, 8, 8))
    removed = prune_channels(m, (1, 8, 8), {"conv1": [0, 1, 2], "layer1.0.conv1": [5]})
    assert removed == 4
    assert m.conv1.out_channels == 13 and m.layer1[0].conv2.out_channels == 13 and m.layer1[0].conv1.out_channels == 15
    assert count_params(m) < before_p and count_macs(m, (1, 8, 8)) < before_m
    assert m(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_concat_and_depthwise_groups_prune():
    for name in ("densenet121", "mobilenet_v2"):
        m = create_model(name, 10, 1, 8).eval()
        groups = channel_groups(m, dependency_graph(m, (1, 8, 8)))
        plan = {g.name: [0] for g in groups[:6] if g.channels > 1}
        prune_channels(m, (1, 8, 8), plan)
        assert m(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_classifier_is_never_a_group_root():
    m = create_model("cnn_small", 10, 1, 8)
    names = [g.name for g in channel_groups(m, dependency_graph(m, (1, 8, 8)))]
    assert names and all(not isinstance(m.get_submodule(n), nn.Linear) or m.get_submodule(n).out_features != 10 for n in names)


def test_bad_removals_raise():
    m = create_model("cnn_small", 10, 1, 8)
    with pytest.raises(SurgeryError, match="unknown"):
        prune_channels(m, (1, 8, 8), {"nope": [0]})
    g = channel_groups(m, dependency_graph(m, (1, 8, 8)))[0]
    with pytest.raises(SurgeryError, match="cannot remove"):
        prune_channels(m, (1, 8, 8), {g.name: list(range(g.channels))})


def test_heads_and_blocks():
    m = create_model("vit_small", 10, 1, 8).eval()
    attn_name = next(n for n, mod in m.named_modules() if hasattr(mod, "keep_heads"))
    heads = m.get_submodule(attn_name).num_heads
    assert prune_heads(m, {attn_name: [0]}) == 1
    assert m.get_submodule(attn_name).num_heads == heads - 1
    with pytest.raises(SurgeryError, match="no head"):
        prune_heads(m, {attn_name: list(range(heads - 1))})
    blocks = block_candidates(m)
    old = remove_block(m, blocks[0])
    assert isinstance(m.get_submodule(blocks[0]), nn.Identity) and not isinstance(old, nn.Identity)
    assert m(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(SurgeryError):
        remove_block(copy.deepcopy(m), "encoder.nope")


@pytest.mark.parametrize("original, expected", [(16, 8), (64, 8), (100, 10), (4, 4), (1, 1)])
def test_channel_floor(original, expected):
    assert channel_floor(original, 8, 0.1) == expected


def test_macs_per_channel_counts_both_sides_of_a_cut():
    from idap.measure.metrics import layer_macs

    model = create_model("resnet20", 10, 1, 28)
    per_layer = layer_macs(model, (1, 28, 28))
    assert sum(per_layer.values()) == count_macs(model, (1, 28, 28))
    groups = {g.name: g for g in channel_groups(model, dependency_graph(model, (1, 28, 28)))}
    # layer1.0.conv1: 16->16 3x3 at 28x28 loses an output channel, layer1.0.conv2 the matching input channel
    assert groups["layer1.0.conv1"].macs_per_channel(per_layer) == 2 * 28 * 28 * 16 * 9
    # one channel of the residual stream of stage 1 costs more than any single conv's channel
    assert groups["conv1"].macs_per_channel(per_layer) > groups["layer1.0.conv1"].macs_per_channel(per_layer)
