"""`idap compress` outputs are whole or nothing, and a run killed with SIGKILL resumes to the same model."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

import idap.cli.commands
from idap.bundle import save_bundle
from idap.bundle.format import BundleError
from idap.cli import main as idap_main

RECIPE = {
    "seed": 0, "max_accuracy_drop": 60.0, "calibration_size": 64, "validation_size": 256, "eval_batch_size": 256,
    "filter": {"steps": 3, "p0": 0.1}, "layer": {"max_removals": 2, "epsilon": 60.0},
    "recovery": {"step_budget": 3, "final_budget": 6, "batch_size": 32},
}


@pytest.fixture
def setup(tmp_path, trained_resnet20):
    dense = save_bundle(trained_resnet20, tmp_path / "dense", input_shape=(1, 8, 8))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    return ["compress", "--model-dir", str(dense), "--dataset", "digits", "--recipe", str(recipe), "--no-latency",
            "--quiet"]


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _weights(out: Path) -> dict:
    return load_file(str(out / "model" / "weights.safetensors"))


@pytest.mark.slow
def test_a_failed_rerun_leaves_the_previous_output_whole_and_a_success_leaves_nothing_stale(setup, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert idap_main([*setup, "--out", str(out)]) == 0
    before = _files(out)
    assert "model.onnx" in before and "report.json" in before

    def broken(*a, **k):
        raise BundleError("simulated ONNX export failure")

    monkeypatch.setattr(idap.cli.compress_cmd, "export_onnx", broken)  # compress writes model.onnx there
    assert idap_main([*setup, "--out", str(out), "--set", "seed=1"]) == 2
    assert _files(out) == before  # the previous result, whole
    monkeypatch.undo()
    assert idap_main([*setup, "--out", str(out), "--no-onnx", "--fresh"]) == 0
    after = _files(out)
    assert "model.onnx" not in after and "report.json" in after
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []  # no partial, no staging


def test_a_compress_that_fails_up_front_writes_nothing(setup, tmp_path, capsys):
    out = tmp_path / "new"
    assert idap_main([*setup, "--out", str(out), "--set", "filter.p0=1.5"]) == 2
    assert idap_main([*setup, "--out", str(out), "--resume"]) == 2
    assert "no interrupted run" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense", "recipe.yaml"]


def test_out_that_is_not_an_idap_output_is_never_replaced(setup, tmp_path, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    assert idap_main([*setup, "--out", str(precious)]) == 2
    assert "not an idap output" in capsys.readouterr().err
    assert (precious / "thesis.tex").read_text() == "years of work"


def _checkpoint_stage(partial: Path):
    meta = partial / "checkpoint" / "model" / "metadata.json"
    try:
        state = json.loads(meta.read_text())["run_state"]
    except (OSError, ValueError, KeyError):
        return None
    return state["stage"], state["position"]


@pytest.mark.slow
def test_sigkill_during_stage_1_resumes_to_the_uninterrupted_model(setup, tmp_path):
    whole = tmp_path / "whole"
    assert idap_main([*setup, "--out", str(whole), "--no-onnx"]) == 0
    out, partial = tmp_path / "killed", tmp_path / ".killed.partial"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "idap", *setup, "--out", str(out), "--no-onnx"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            where = _checkpoint_stage(partial)
            if where and where[0] == "filter" and where[1].get("t", 0) >= 1:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed in stage 1"
    assert not out.exists() and partial.is_dir()
    assert idap_main([*setup, "--out", str(out), "--no-onnx", "--resume"]) == 0
    assert not partial.exists()
    ours, theirs = _weights(out), _weights(whole)
    assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)
    steps = [{k: v for k, v in s.items() if k != "seconds"} for s in json.loads((out / "report.json").read_text())["trajectory"]]
    expected = [{k: v for k, v in s.items() if k != "seconds"} for s in json.loads((whole / "report.json").read_text())["trajectory"]]
    assert steps == expected
