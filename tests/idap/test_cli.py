"""The library CLI on real digits: train -> compress -> evaluate, and clear errors for bad input."""

import json

import pytest

from idap.bundle import load_bundle
from idap.cli import main

FAST = ["--set", "calibration_size=64", "--set", "validation_size=200", "--set", "filter.steps=2",
        "--set", "filter.p0=0.2", "--set", "recovery.step_budget=3", "--set", "recovery.final_budget=5",
        "--set", "recovery.batch_size=32", "--set", "layer.max_removals=1"]


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("dense")
    assert main(["train", "--model", "resnet20", "--dataset", "digits", "--epochs", "2", "--out", str(out), "--quiet"]) == 0
    return out


def test_train_writes_bundle_and_metrics(dense_dir):
    metrics = json.loads((dense_dir / "metrics.json").read_text())
    assert {"val_acc", "test_acc", "params", "macs"} <= set(metrics)
    assert load_bundle(dense_dir) is not None


@pytest.mark.slow
def test_compress_writes_model_report_and_plots(dense_dir, tmp_path, capsys):
    out = tmp_path / "c"
    code = main(["compress", "--model-dir", str(dense_dir), "--dataset", "digits", "--max-accuracy-drop", "100",
                 "--target-macs-reduction", "1.5", "--out", str(out), "--quiet", *FAST])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    for side in ("dense", "compressed"):
        assert {"val_acc", "test_acc", "params", "macs", "latency_ms_b1", "throughput_b64"} <= set(report[side])
    assert report["ratios"]["macs_reduction"] >= 1.5
    assert report["recipe"]["target_macs_reduction"] == 1.5
    assert [s["stage"] for s in report["trajectory"]][0] == "dense"
    for f in ("report.md", "trajectory.png", "divergence_profile.png", "widths.png", "model.onnx", "recipe.yaml"):
        assert (out / f).is_file(), f
    assert "Trajectory" in (out / "report.md").read_text()
    model = load_bundle(out / "model")
    assert sum(p.numel() for p in model.parameters()) == report["compressed"]["params"]
    capsys.readouterr()
    assert main(["evaluate", "--model-dir", str(out / "model"), "--dataset", "digits", "--no-latency"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test_acc"] == pytest.approx(report["compressed"]["test_acc"])


def test_evaluate_prints_json(dense_dir, capsys):
    assert main(["evaluate", "--model-dir", str(dense_dir), "--dataset", "digits", "--no-latency"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["params"] > 0 and 0 <= result["test_acc"] <= 100


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compress", "--model", "nosuchnet", "--dataset", "digits", "--out", "{tmp}/o"], "nosuchnet"),
        (["compress", "--model-dir", "{tmp}/missing", "--dataset", "digits", "--out", "{tmp}/o"], "missing"),
        (["compress", "--model", "cnn_small", "--dataset", "{tmp}/nope.npz", "--out", "{tmp}/o"], "nope.npz"),
        (["compress", "--model", "cnn_small", "--dataset", "digits", "--set", "filter.p0=3", "--out", "{tmp}/o"], "filter.p0"),
        (["compress", "--model", "cnn_small", "--dataset", "digits", "--recipe", "{tmp}/r.yaml", "--out", "{tmp}/o"], "r.yaml"),
    ],
)
def test_bad_input_fails_clearly(argv, message, tmp_path, capsys):
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "model").exists()  # nothing half-written


def test_corrupt_bundle_fails_clearly(dense_dir, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(dense_dir, bad)
    (bad / "weights.safetensors").write_bytes((bad / "weights.safetensors").read_bytes()[:100])
    code = main(["evaluate", "--model-dir", str(bad), "--dataset", "digits", "--no-latency"])
    assert code == 2 and "weights.safetensors" in capsys.readouterr().err
