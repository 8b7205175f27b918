"""pipelines.console.StepConsole: kfp.local's output (as kfp 2.17 writes it) routed to a log file, with one
line per step on the console."""

import io
import logging
import sys

from pipelines.console import StepConsole, describe

# What kfp.local writes for two steps: its log records (root logger), then each step's output, indented.
KFP_OUTPUT = """\
09:19:26.709 - INFO - Executing task \x1b[96m'prepare-data'\x1b[0m
    [KFP Executor 2026-12-01 09:19:26,779 INFO]: Looking for component `prepare_data` in --component_module_path `/tmp/x.py`
    [KFP Executor 2026-12-01 09:19:26,781 INFO]: Got executor_input:
    {
        "inputs": {"parameterValues": {"dataset": "fashion-mnist"}}
    }
    data: fashion-mnist {'train': 20000, 'validation': 2000} -> /w/kfp/run/prepare-data/data
09:19:38.669 - INFO - Task \x1b[96m'prepare-data'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m
09:19:38.672 - INFO - Executing task \x1b[96m'prune-filters'\x1b[0m
    [filter 0] prune        params=200,000 MACs=15,000,000 val=86.10% 40 channels  (3.1s)
    [filter 1] prune        params=150,000 MACs=11,000,000 val=85.90% 38 channels  (3.0s)
    [filter 2] rollback     params=120,000 MACs=9,000,000 val=82.00% 30 channels accuracy drop 4.05 pp > budget 3.5 pp: step rolled back (3.2s)
09:19:48.672 - INFO - Task \x1b[96m'prune-filters'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m
"""

FAILING = """\
09:20:00.000 - INFO - Executing task \x1b[96m'score-divergence'\x1b[0m
    Traceback (most recent call last):
      File "ephemeral_component.py", line 19, in score_divergence
    ModuleNotFoundError: No module named 'idap.checkpoint'
09:20:01.000 - ERROR - Task \x1b[96m'score-divergence'\x1b[0m finished with status \x1b[91mFAILURE\x1b[0m
"""


def run_console(tmp_path, text, **kw):
    screen = io.StringIO()
    with StepConsole(tmp_path / "logs" / "run.log", total_steps=8, out=screen, **kw) as console:
        assert sys.stdout is console and sys.stderr is console
        for chunk in (text[:100], text[100:]):  # writes need not end at line ends
            sys.stdout.write(chunk)
    assert sys.stdout is not console
    return screen.getvalue(), (tmp_path / "logs" / "run.log").read_text(), console


def test_one_line_per_step_and_everything_in_the_log(tmp_path):
    screen, log, console = run_console(tmp_path, KFP_OUTPUT)
    lines = screen.splitlines()
    assert len(lines) == 2, screen
    assert lines[0].startswith("[1/8] prepare-data") and " ok " in lines[0]
    assert lines[0].endswith("fashion-mnist train: 20000, validation: 2000")
    assert lines[1].startswith("[2/8] prune-filters")
    assert "2 pruning step(s), step 2 rolled back (accuracy drop 4.05 pp > budget 3.5 pp)" in lines[1]
    assert "MACs 11,000,000, params 150,000, val 85.90%" in lines[1]
    assert "Got executor_input" in log and '"parameterValues"' in log and "\x1b[" not in log
    assert [d["step"] for d in console.done] == ["prepare-data", "prune-filters"]


def test_a_failing_step_shows_its_last_lines(tmp_path):
    screen, log, console = run_console(tmp_path, FAILING)
    assert screen.splitlines()[0].startswith("[1/8] score-divergence  FAILURE")
    assert "    | ModuleNotFoundError: No module named 'idap.checkpoint'" in screen
    assert console.done[0]["status"] == "FAILURE"


def test_verbose_passes_everything_through(tmp_path):
    screen, log, _ = run_console(tmp_path, KFP_OUTPUT, verbose=True)
    assert "Got executor_input" in screen and screen.count("\n") == log.count("\n")


def test_noisy_loggers_are_quiet_during_the_run_and_restored(tmp_path):
    logging.getLogger("kfp").setLevel(logging.INFO)
    with StepConsole(tmp_path / "run.log", out=io.StringIO()):
        assert logging.getLogger("kfp").level == logging.WARNING
    assert logging.getLogger("kfp").level == logging.INFO


def test_describe_a_layer_stage():
    records = [{"stage": "layer", "index": 0, "action": "remove_block", "params": 1, "macs": 9, "val_acc": 86.0,
                "rest": "layer2.1  (2.0s)"},
               {"stage": "layer", "index": 1, "action": "revert_block", "params": 1, "macs": 9, "val_acc": 80.0,
                "rest": "layer3.0 essential"}]
    assert describe("prune-layers", records, "") == "removed 1 block(s) (layer2.1), 1 kept as essential; MACs 9, val 86.00%"
