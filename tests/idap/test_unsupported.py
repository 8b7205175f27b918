"""Layers the tools around the method do not know: MACs still count their work (or name what they cannot),
and channels whose users the dependency graph cannot follow are left unpruned with a warning, not a crash."""

import pytest
import torch
from torch import nn

from idap.measure.metrics import count_macs, uncounted_modules
from idap.models import create_model, register_model
from idap.prune.compress import compress
from idap.prune.config import Recipe


class _Recurrent(nn.Module):
    def __init__(self, bidirectional=False, layers=1, kind=nn.LSTM):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.rnn = kind(32, 24, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(24 * (2 if bidirectional else 1), 10)

    def forward(self, x):
        x = self.conv(x).reshape(x.shape[0], 8, 32)  # 8 steps of 4 channels x 8 columns
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


@pytest.mark.parametrize("kind,gates", [(nn.LSTM, 4), (nn.GRU, 3), (nn.RNN, 1)])
@pytest.mark.parametrize("bidirectional,layers", [(False, 1), (True, 2)])
def test_recurrent_layers_are_counted(kind, gates, bidirectional, layers):
    model = _Recurrent(bidirectional, layers, kind).eval()
    dirs = 2 if bidirectional else 1
    rnn = gates * 24 * (32 + 24) * 8 * dirs + (layers - 1) * gates * 24 * (24 * dirs + 24) * 8 * dirs
    conv, fc = 4 * 9 * 64, 24 * dirs * 10
    assert count_macs(model, (1, 8, 8)) == conv + rnn + fc
    assert uncounted_modules(model, (1, 8, 8)) == []


class _Opaque(nn.Module):
    """Does matrix work the counter cannot see (an FFT against a learned filter bank)."""

    def __init__(self):
        super().__init__()
        self.filters = nn.Parameter(torch.randn(10, 10))

    def forward(self, x):
        return torch.fft.fft(x).real * self.filters.diagonal()


def test_work_the_counter_cannot_see_is_named():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), _Opaque(), nn.BatchNorm1d(10))
    assert uncounted_modules(model, (1, 8, 8)) == ["2"]  # the norm does no MAC work by convention


class _EinsumMix(nn.Module):
    """A free channel-mixing parameter used through einsum: Torch-Pruning cannot follow it."""

    def __init__(self, num_classes, in_channels, image_size):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.mix = nn.Parameter(torch.eye(16))
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.einsum("bchw,cd->bdhw", x, self.mix)
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


register_model("test_einsum_mix")(_EinsumMix)


def test_unfollowable_channels_are_left_unpruned_with_a_warning(digits):
    torch.manual_seed(0)
    model = create_model("test_einsum_mix", digits.num_classes, digits.in_channels, digits.image_size)
    recipe = Recipe.from_dict({"max_accuracy_drop": 100.0, "calibration_size": 64,
                               "filter": {"steps": 2, "p0": 0.2, "min_channels": 2, "round_to": 1},  # 16 channels: no room for 8s
                               "recovery": {"step_budget": 2, "final_budget": 2}})
    with pytest.warns(UserWarning, match="conv1: left unpruned.*einsum"):
        result = compress(model, digits, recipe)
    assert result.model.conv1.out_channels == 16 and result.model.conv2.out_channels < 16
    assert [s.action for s in result.steps if s.stage == "filter"] == ["prune", "prune"]


def test_the_report_claims_no_macs_reduction_for_work_it_cannot_count(digits):
    from idap.report import compression_report

    opaque = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), _Opaque())
    report = compression_report(opaque, opaque, digits, recipe={}, steps=[], latency=False)
    assert report["uncounted_modules"] == ["2"] and report["ratios"]["macs_reduction"] is None
    assert any("could not be counted" in w for w in report["warnings"])
    lstm = _Recurrent().eval()  # 1x8x8 digits read as 8 steps of 4 channels x 8 columns
    counted = compression_report(lstm, lstm, digits, recipe={}, steps=[], latency=False)
    assert counted["uncounted_modules"] == [] and counted["ratios"]["macs_reduction"] == 1.0
