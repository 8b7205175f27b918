"""idap.report.evaluate: the target verdict and what stopped each stage, ONNX Runtime timings beside PyTorch's,
the console summary and the Markdown report."""

import pytest
import torch

from idap.bundle.onnx_export import export_onnx
from idap.measure.speed import measure_speed
from idap.models import create_model
from idap.prune.config import Recipe
from idap.report import build_report, stopping_limits
from idap.report.files import render_markdown, summary_lines

DENSE = {"val_acc": 90.0, "test_acc": 89.0, "params": 20_000, "macs": 100_000, "latency_ms_b1": 1.0,
         "throughput_b64": 9000.0, "ort_latency_ms_b1": 0.2, "ort_throughput_b64": 40000.0, "device": "cpu",
         "threads": 1}
COMPRESSED = {"val_acc": 89.5, "test_acc": 88.8, "params": 10_000, "macs": 74_600, "latency_ms_b1": 0.8,
              "throughput_b64": 11000.0, "ort_latency_ms_b1": 0.15, "ort_throughput_b64": 52000.0, "device": "cpu",
              "threads": 1}


def step(stage, index, action, macs=80_000, val=89.8, note="", **kw):
    return {"stage": stage, "index": index, "action": action, "params": 15_000, "macs": macs, "val_acc": val,
            "note": note, "accepted": action in ("dense", "prune", "remove_block", "finetune"), **kw}


def recipe(**overrides) -> dict:
    return Recipe(max_accuracy_drop=1.0, **overrides).to_dict()


def test_missed_target_is_said_plainly_with_the_limit_that_stopped_it():
    steps = [step("dense", 0, "dense"), step("filter", 0, "prune"), step("filter", 1, "prune"),
             step("filter", 2, "rollback", note="accuracy drop 1.20 pp > budget 1.0 pp: step rolled back"),
             step("layer", 0, "revert_block", note="essential"), step("finetune", 0, "finetune")]
    report = build_report(dense=DENSE, compressed=COMPRESSED, steps=steps, recipe=recipe(target_macs_reduction=2.0),
                          dataset={"name": "digits"}, model_name="mobilenet_v2")
    assert report["within_budget"] is True and report["target_met"] is False
    assert report["targets"] == {"macs_reduction": {"target": 2.0, "reached": pytest.approx(1.34, abs=0.01),
                                                    "met": False}}
    assert report["stopped_by"][0] == ("stage 1 (filters): the accuracy budget — step 2 was rolled back "
                                       "(accuracy drop 1.20 pp > budget 1.0 pp), 2 step(s) kept")
    assert "1 essential" in report["stopped_by"][1]
    warning = report["warnings"][0]
    assert warning.startswith("target not reached: asked for 2x fewer MACs (reached 1.34x) within 1.0 pp; stopped by:")
    text = render_markdown(report)
    assert "Target **NOT reached**: 2x fewer MACs (reached 1.34x)." in text and f"> **Warning:** {warning}" in text
    console = summary_lines(report)
    assert "TARGET NOT REACHED: asked for 2x fewer MACs (reached 1.34x) within 1.0 pp" in console
    assert any(line.startswith("stopped by stage 1 (filters): the accuracy budget") for line in console)


@pytest.mark.parametrize(("steps", "overrides", "expected"), [
    ([step("filter", i, "prune") for i in range(3)], {"filter": {"steps": 3}},
     ["stage 1 (filters): the schedule — all filter.steps=3 steps were taken"]),
    ([step("filter", 0, "prune"), step("filter", 1, "stop", note="nothing left to prune above the per-layer floors")],
     {}, ["stage 1 (filters): the per-layer floors — nothing left above filter.min_channels / min_fraction after 1 step(s)"]),
    ([step("filter", 0, "stop", note="target reached")], {}, ["stage 1 (filters): the target was reached after 0 step(s)"]),
    ([step("layer", 0, "remove_block"), step("layer", 1, "remove_block")], {"layer": {"max_removals": 2}},
     ["stage 2 (blocks): K — layer.max_removals=2 block(s) removed"]),
    ([step("layer", 0, "remove_block"), step("layer", 1, "skip_block", note="would overshoot the 2x target")], {},
     ["stage 2 (blocks): the candidates ran out — 1 removed, 1 would overshoot the target"]),
    ([step("finetune", 0, "finetune")], {}, ["stage 2 (blocks): nothing to remove — the model has no stride-1, "
                                             "same-width residual block"]),
])
def test_stopping_limits_read_from_the_trajectory(steps, overrides, expected):
    got = stopping_limits(steps, recipe(**overrides))
    stage1 = [g for g in got if g.startswith("stage 1")]
    stage2 = [g for g in got if g.startswith("stage 2")]
    assert (stage1 if expected[0].startswith("stage 1") else stage2) == expected


def test_a_top_up_after_stage_2_is_its_own_line():
    steps = [step("filter", 0, "prune"), step("layer", 0, "remove_block"),
             step("filter", 0, "stop", note="top-up after stage 2. target reached")]
    got = stopping_limits(steps, recipe(layer={"max_removals": 1}))
    assert got == ["stage 1 (filters): 1 step(s) kept, last: prune",
                   "top-up (filters after stage 2): the target was reached after 0 step(s)",
                   "stage 2 (blocks): K — layer.max_removals=1 block(s) removed"]


def test_no_target_no_verdict():
    report = build_report(dense=DENSE, compressed=COMPRESSED, steps=[], recipe=recipe(), dataset={"name": "d"},
                          model_name="m")
    assert report["target_met"] is None and report["targets"] == {}
    assert not any("target" in w for w in report["warnings"])


def test_onnx_runtime_timed_beside_pytorch_with_the_same_threads(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        models = {"a": create_model("cnn_small", 10, 1, 8).eval(), "b": create_model("resnet_tiny", 10, 1, 8).eval()}
        onnx = {k: export_onnx(m, tmp_path / f"{k}.onnx", input_shape=(1, 8, 8)) for k, m in models.items()}
        speed = measure_speed(models, (1, 8, 8), rounds=1, repeats=3, onnx={"a": onnx["a"]})
    finally:
        torch.set_num_threads(threads)
    assert speed["a"]["ort_latency_ms_b1"] > 0 and speed["a"]["ort_throughput_b64"] > 0
    assert speed["a"]["ort_threads"] == speed["a"]["threads"] == 1
    assert "ort_latency_ms_b1" not in speed["b"] and speed["b"]["latency_ms_b1"] > 0


def test_summary_table_and_markdown_show_both_runtimes():
    report = build_report(dense=DENSE, compressed=COMPRESSED, steps=[], recipe=recipe(), dataset={"name": "d"},
                          model_name="m", profile={"layers": [], "blocks": {"layer1.1": 0.1, "layer2.1": 0.2}},
                          removed_blocks=["layer1.1"])
    assert report["ratios"]["ort_speedup_b1"] == pytest.approx(0.2 / 0.15)
    lines = summary_lines(report)
    assert lines[0].split() == ["dense", "compressed", "change"]
    assert any(line.split()[:3] == ["ONNX", "Runtime", "latency,"] and "1.33x faster" in line for line in lines)
    assert "stage 2 removed 1 of 2 removable blocks: layer1.1" in lines
    assert len(lines) < 15
    text = render_markdown(report)
    assert "| ONNX Runtime latency, batch 1 (ms) | 0.200 | 0.150 | 1.33x faster |" in text
