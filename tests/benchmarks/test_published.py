"""The cifar10-resnet56 preset carries Torch-Pruning's published figures, and the report puts ours beside them."""

from dataclasses import asdict

from benchmarks.pages import published_lines
from benchmarks.presets import PRESETS


def _row(method, label, acc, reduction):
    return {"method": method, "label": label, "target": 2.12, "blocks": None, "test_acc": {"mean": acc},
            "macs_reduction": reduction}


def test_cifar_preset_reports_published_figures_beside_ours():
    preset = asdict(PRESETS["cifar10-resnet56"])
    assert preset["dataset"] == "cifar10" and preset["model"] == "resnet56" and 2.12 in preset["targets"]
    rows = [_row("idap++", "IDAP++ (filters + blocks)", 92.50, 2.2), _row("tp-l1", "L1", 92.00, 2.15)]
    lines = published_lines(preset, rows, {"test_acc": 93.00})
    text = "\n".join(lines)
    assert "| L1 (Li et al.) — published | 93.53 | 92.93 | -0.60 | 2.12 |" in text
    assert "93.77" in text and "JPEG" in text
    assert "| IDAP++ (filters + blocks) — this run | 93.00 | 92.50 | -0.50 | 2.20 |" in text
    assert published_lines(asdict(PRESETS["digits-smoke"]), rows, {"test_acc": 93.0}) == []
