"""Every criterion behind one interface; the IDAP group score is the sum of its members' flow scores."""

import pytest
import torch

from idap.models import create_model
from idap.prune.divergence import flow_profile
from idap.prune.importance import FlowImportance, ScoringContext, create_importance, list_importances
from idap.prune.surgery import channel_groups, dependency_graph


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    m = create_model("resnet20", 10, 1, 8).eval()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    return m, x, y, channel_groups(m, dependency_graph(m, (1, 8, 8)))


@pytest.mark.parametrize("name", list_importances())
def test_every_criterion_scores_every_group(name, setup):
    m, x, y, groups = setup
    imp = create_importance(name)
    imp.prepare(m, ScoringContext(x, y, batch_size=8))
    for g in groups:
        s = imp(g)
        assert s is not None and s.shape == (g.channels,) and torch.isfinite(s).all()
    m.zero_grad(set_to_none=True)


def test_unknown_criterion_lists_valid_ones():
    with pytest.raises(ValueError, match="l1"):
        create_importance("magic")


def test_idap_group_score_is_sum_of_member_scores(setup):
    m, x, y, groups = setup
    profile = flow_profile(m, x)
    imp = FlowImportance(profile)
    imp.prepare(m, ScoringContext(x, y))
    names = {mod: n for n, mod in m.named_modules()}
    g = next(g for g in groups if g.name == "conv1")  # residual group: many members
    expected = torch.zeros(g.channels)
    for layer, idxs, root in g.members():
        expected[root] += profile.channel[names[layer]][idxs]
    assert torch.allclose(imp(g), expected)
    assert len(list(g.members())) > 2


def test_random_criterion_is_seeded(setup):
    m, x, y, groups = setup
    a, b = create_importance("random"), create_importance("random")
    a.prepare(m, ScoringContext(x, y, seed=3))
    b.prepare(m, ScoringContext(x, y, seed=3))
    assert torch.equal(a(groups[0]), b(groups[0]))


def test_head_scores_for_vit():
    torch.manual_seed(0)
    m = create_model("vit_small", 10, 1, 8).eval()
    x = torch.randn(4, 1, 8, 8)
    for name in ("idap", "l1", "random"):
        imp = create_importance(name)
        imp.prepare(m, ScoringContext(x, torch.zeros(4, dtype=torch.long)))
        heads = imp.head_scores(m)
        assert len(heads) == 6 and all(s.shape == (4,) for s in heads.values())
