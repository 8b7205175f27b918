"""Accuracy, params, MACs (checked by hand), latency/throughput fields, device resolution."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from idap.measure.metrics import (
    accuracy,
    count_macs,
    count_params,
    measure_latency,
    measure_throughput,
    resolve_device,
)
from idap.models.attention import HeadPrunableAttention


def _conv_linear_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10)
    )


class _SelfAttention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.attn = HeadPrunableAttention(embed_dim, num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x)[0]


class _ArgmaxOfFirstFeature(nn.Module):
    """Predicts the class stored in x[:, 0] (one-hot logits) and records the mode it ran in."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.seen_training: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen_training.append(self.training)
        return nn.functional.one_hot(x[:, 0].long(), self.num_classes).float()


def test_macs_of_conv_and_linear_by_hand():
    # Conv2d(1, 4, 3, padding=1) on 1x8x8: 4 filters x 9 taps x 64 positions; Linear 256 -> 10.
    assert count_macs(_conv_linear_net(), (1, 8, 8)) == 4 * 9 * 64 + 256 * 10


def test_macs_accept_a_leading_batch_of_one_and_reject_larger_batches():
    net = _conv_linear_net()
    assert count_macs(net, (1, 1, 8, 8)) == count_macs(net, (1, 8, 8))
    with pytest.raises(ValueError, match="one sample"):
        count_macs(net, (2, 1, 8, 8))


@pytest.mark.parametrize(
    ("groups", "cin", "cout", "expected"),
    [
        (4, 4, 4, 4 * 1 * 9 * 64),  # depthwise: each filter sees one input channel
        (2, 4, 8, 8 * 2 * 9 * 64),  # grouped: each filter sees cin / groups = 2 channels
        (1, 4, 8, 8 * 4 * 9 * 64),
    ],
)
def test_macs_of_grouped_and_depthwise_convs(groups, cin, cout, expected):
    conv = nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=False)
    assert count_macs(conv, (cin, 8, 8)) == expected


def test_attention_macs_include_the_attention_matmuls():
    embed, heads, tokens = 32, 4, 5
    model = _SelfAttention(embed, heads)
    projections = 4 * tokens * embed * embed  # q, k, v, out
    # Q·Kᵀ and P·V: heads x tokens x tokens x head_dim each.
    attention = 2 * heads * tokens * tokens * (embed // heads)
    assert count_macs(model, (tokens, embed)) == projections + attention


def test_attention_macs_follow_pruned_heads():
    model = _SelfAttention(32, 4)
    before = count_macs(model, (5, 32))
    model.attn.keep_heads(torch.tensor([0, 2]))
    after = count_macs(model, (5, 32))
    # Half the heads: q/k/v rows, out_proj columns and the attention matmuls all halve.
    assert after == before // 2


def test_count_macs_leaves_model_state_alone():
    net = _conv_linear_net().train()
    net[1].eval()  # a module frozen in eval inside a training model keeps its own flag
    stats = net[1].running_mean.clone()
    count_macs(net, (1, 8, 8))
    assert net.training and net[0].training and not net[1].training
    assert torch.equal(net[1].running_mean, stats)
    assert int(net[1].num_batches_tracked) == 0


def test_count_params_counts_shared_parameters_once():
    shared = nn.Linear(3, 3)
    assert count_params(nn.Sequential(shared, shared)) == 12
    assert count_params(_conv_linear_net()) == (4 * 9 + 4) + (4 + 4) + (256 * 10 + 10)


def test_accuracy_of_known_predictions_across_batches():
    model = _ArgmaxOfFirstFeature(num_classes=3).train()
    predicted = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    x = torch.stack([predicted.float(), torch.zeros(10)], dim=1)
    y = predicted.clone()
    y[[1, 4, 7]] = 0  # three wrong out of ten
    assert accuracy(model, x, y, batch_size=3) == pytest.approx(70.0)
    assert model.seen_training == [False] * 4  # four batches of <= 3, all in eval mode
    assert model.training  # flag restored


def test_accuracy_rejects_mismatched_or_empty_inputs():
    model = _ArgmaxOfFirstFeature(2)
    with pytest.raises(ValueError, match="differ in length"):
        accuracy(model, torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        accuracy(model, torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))


def test_latency_and_throughput_report_their_fields():
    net = _conv_linear_net().train()
    latency = measure_latency(net, (1, 8, 8), warmup=1, repeats=5)
    assert set(latency) == {
        "median_ms",
        "p90_ms",
        "mean_ms",
        "batch_size",
        "repeats",
        "threads",
        "device",
        "device_name",
    }
    assert 0 < latency["median_ms"] <= latency["p90_ms"]
    assert latency["batch_size"] == 1 and latency["repeats"] == 5
    assert latency["threads"] == torch.get_num_threads() and latency["device"] == "cpu"
    throughput = measure_throughput(net, (1, 8, 8), batch_size=4, warmup=1, repeats=3)
    assert throughput["samples_per_s"] == pytest.approx(4 / (throughput["median_ms"] / 1e3))
    assert throughput["batch_size"] == 4
    assert net.training and net[1].training


def test_latency_rejects_nonsense_settings():
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(_conv_linear_net(), (1, 8, 8), repeats=0)


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="valid: 'auto', 'cpu'"):
        resolve_device("tpu")
