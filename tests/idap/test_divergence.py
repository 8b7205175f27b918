"""Flow scores against values computed by hand on small tensors (spec §1)."""

import pytest
import torch
from torch import nn

from idap.models.attention import HeadPrunableAttention
from idap.prune.divergence import block_divergence, block_influence, channel_score, flow_profile, head_score


class TwoConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(2)
        self.block = nn.Identity()
        self.fc = nn.Linear(2, 3, bias=False)

    def forward(self, x):
        z = self.block(torch.relu(self.bn(self.conv(x))))
        return self.fc(z.mean(dim=(2, 3)))


def test_conv_channel_score_by_hand():
    m = TwoConv().eval()
    with torch.no_grad():
        m.conv.weight.copy_(torch.tensor([[[[2.0]]], [[[-1.0]]]]))
    x = torch.tensor([[[[1.0, -1.0], [3.0, 0.0]]], [[[0.0, 2.0], [0.0, 0.0]]]])  # (2, 1, 2, 2)
    p = flow_profile(m, x, batch_size=1)
    # channel 0: z = 2x -> relu -> sample norms sqrt(4+36)=sqrt(40), sqrt(16)=4; ||W||=2; C=2, |P|=4
    a0 = (40 ** 0.5 + 4.0) / 2
    # channel 1: z = -x -> relu keeps only the -1 entry of sample 0 -> norms 1, 0; ||W||=1
    a1 = (1.0 + 0.0) / 2
    expected = torch.tensor([a0 * 2 / 8, a1 * 1 / 8])
    assert torch.allclose(p.channel["conv"], expected, atol=1e-6)
    assert p.samples == 2


def test_linear_scores_plain_and_token_shaped():
    w = torch.tensor([[1.0, 0.0], [0.0, -2.0]])
    # plain (B, C): |P| = 1
    z = torch.tensor([[1.0, 3.0], [-1.0, -1.0]])
    expected = torch.tensor([(1 + 0) / 2 * 1 / 2, (3 + 0) / 2 * 2 / 2])
    assert torch.allclose(channel_score(torch.relu(z).mean(0), w, 1), expected)
    # token-shaped (B, N, C) through a real Linear: positions are the N tokens
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    seq = nn.Sequential(lin)
    x = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, -1.0]]])  # (1, 3, 2)
    p = flow_profile(seq, x)
    out = torch.relu(lin(x))[0]  # (3, 2)
    expected = out.norm(dim=0) * w.norm(dim=1) / (2 * 3)
    assert torch.allclose(p.channel["0"], expected.detach(), atol=1e-6)


def test_block_divergence_and_influence_by_hand():
    x = torch.tensor([[3.0, 4.0]])
    y = torch.tensor([[3.0, 0.0]])
    assert block_divergence(x, y).item() == pytest.approx(4.0 / 3.0, rel=1e-5)
    assert block_influence(x, y).item() == pytest.approx(1 - 9 / (5 * 3), rel=1e-5)
    assert block_divergence(x, x).item() == pytest.approx(0.0)


def test_identity_block_scores_zero_and_profile_restores_mode():
    m = TwoConv().train()
    p = flow_profile(m, torch.randn(4, 1, 3, 3), blocks=["block"])
    assert p.blocks["block"] == pytest.approx(0.0, abs=1e-6)
    assert m.training  # training flag restored
    assert not any(mod._forward_hooks for mod in m.modules())  # hooks removed


def test_head_score_by_hand_and_in_profile():
    torch.manual_seed(0)
    attn = HeadPrunableAttention(8, 2).eval()
    x = torch.randn(3, 5, 8)
    per_head = attn.per_head_output(x)  # (B, H, N, d)
    s = head_score(per_head, attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, 2)
    for h in range(2):
        out = per_head[:, h].flatten(1).norm(dim=1).mean() / 5
        w = sum(p.weight[h * 4:(h + 1) * 4].norm() for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        assert s[h].item() == pytest.approx((out * w).item(), rel=1e-5)

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    p = flow_profile(Wrap(), x, batch_size=2)
    assert torch.allclose(p.heads["attn"], s.detach(), rtol=1e-5)
    assert "attn.q_proj" not in p.channel  # projections inside attention are scored as heads
    # the heads are read at out_proj's input, not recomputed; a module without an out_proj is asked for
    # per_head_output, with the same scores
    calls = []
    original = attn.per_head_output
    attn.per_head_output = lambda *a, **k: calls.append(1) or original(*a, **k)
    flow_profile(Wrap(), x, batch_size=2)
    assert not calls
    proj = attn.out_proj
    attn.out_proj = None  # what the head-score path sees of a module without out_proj
    try:
        from idap.prune.divergence import _reads_out_proj

        assert not _reads_out_proj(attn)
    finally:
        attn.out_proj = proj
    assert _reads_out_proj(attn)


def test_head_scores_of_a_grouped_query_attention_match_per_head_output():
    from idap.models.lm import GroupedQueryAttention
    from idap.prune.divergence import _head_weight_norms

    torch.manual_seed(0)
    gqa = GroupedQueryAttention(16, kv_heads=2, queries_per_group=2, head_dim=4, rope_theta=10000.0)
    x = torch.randn(2, 6, 16)

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = gqa

        def forward(self, x):
            return self.attn(x)

    p = flow_profile(Wrap().eval(), x)
    per_head = gqa.per_head_output(x)
    expected = per_head.flatten(2).norm(dim=2).mean(dim=0) / per_head.shape[2] * _head_weight_norms(
        gqa.q_proj.weight, gqa.k_proj.weight, gqa.v_proj.weight, gqa.num_heads)
    assert torch.allclose(p.heads["attn"], expected, rtol=1e-4)


def test_pointwise_flag_and_post_point():
    m = TwoConv().eval()
    with torch.no_grad():
        m.bn.weight.copy_(torch.tensor([0.5, 3.0]))
        m.bn.running_mean.copy_(torch.tensor([0.2, -0.3]))
    x = torch.randn(4, 1, 3, 3)
    assert flow_profile(m, x, score_pointwise=False).channel["conv"].abs().sum() == 0
    pre = flow_profile(m, x, point="pre").channel["conv"]
    post = flow_profile(m, x, point="post").channel["conv"]
    assert pre.shape == post.shape and not torch.allclose(pre, post)


def test_random_and_channel_mean_block_metrics_and_errors():
    m = TwoConv().eval()
    x = torch.randn(4, 1, 3, 3)
    r1 = flow_profile(m, x, blocks=["block"], block_metric="random", seed=1).blocks
    r2 = flow_profile(m, x, blocks=["block"], block_metric="random", seed=1).blocks
    assert r1 == r2
    with pytest.raises(ValueError, match="unknown block"):
        flow_profile(m, x, blocks=["nope"])
    with pytest.raises(ValueError, match="block_metric"):
        flow_profile(m, x, block_metric="magic")
    with pytest.raises(ValueError, match="empty"):
        flow_profile(m, x[:0])


def test_profile_costs_one_forward_per_batch():
    m = TwoConv().eval()
    calls = []
    m.register_forward_pre_hook(lambda mod, inp: calls.append(inp[0].shape[0]))
    flow_profile(m, torch.randn(10, 1, 3, 3), batch_size=4, blocks=["block"])
    assert calls == [4, 4, 2]


@pytest.mark.parametrize("point", ["pre", "post"])
def test_channels_last_blocks_score_one_value_per_channel(point):
    from idap.models import create_model

    m = create_model("convnext_tiny", 10, 1, 8).eval()  # Permute -> LayerNorm -> Linear, and LayerNorm2d stems
    p = flow_profile(m, torch.randn(2, 1, 8, 8), point=point)
    named = dict(m.named_modules())
    for name, s in p.channel.items():
        layer = named[name]
        assert s.numel() == getattr(layer, "out_channels", getattr(layer, "out_features", None)), name


def test_a_registered_block_score_is_usable_from_a_recipe(monkeypatch):
    from idap import divergence
    from idap.prune.config import ConfigError, Recipe

    monkeypatch.setattr(divergence, "_BLOCK_SCORES", dict(divergence._BLOCK_SCORES))
    with pytest.raises(ConfigError, match=r"layer.block_score must be one of \[.*'divergence'.*got 'output_norm'"):
        Recipe.from_dict({"layer": {"block_score": "output_norm"}})
    divergence.register_block_score("output_norm", divergence.BlockScore(pair=lambda x, y: y.flatten(1).norm(dim=1)))
    assert Recipe.from_dict({"layer": {"block_score": "output_norm"}}).layer.block_score == "output_norm"
    m = TwoConv().eval()
    scores = flow_profile(m, torch.randn(4, 1, 3, 3), blocks=["block"], block_metric="output_norm").blocks
    assert scores["block"] > 0
    with pytest.raises(ValueError, match="already registered"):
        divergence.register_block_score("output_norm", divergence.BlockScore(pair=lambda x, y: y.sum()))
    with pytest.raises(ValueError, match="exactly one"):
        divergence.BlockScore()


def test_a_registered_importance_is_usable_from_a_recipe(monkeypatch):
    from idap import importance
    from idap.prune.config import ConfigError, Recipe

    monkeypatch.setattr(importance, "_REGISTRY", dict(importance._REGISTRY))
    with pytest.raises(ConfigError, match="filter.importance must be one of"):
        Recipe.from_dict({"filter": {"importance": "my_l2"}})
    importance.register_importance("my_l2")(type("MyL2", (importance.L1Importance,), {}))
    assert Recipe.from_dict({"filter": {"importance": "my_l2"}}).filter.importance == "my_l2"
