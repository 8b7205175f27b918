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
    ModuleNotFoundError: No module named 'idap.prune.checkpoint'
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
    assert "    | ModuleNotFoundError: No module named 'idap.prune.checkpoint'" in screen
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


# ---- progress of the long steps: a live line on a terminal, nothing extra elsewhere ----------------
# A training step as kfp.local passes it on: tqdm's redraws arrive as lines (the pipe is read with universal
# newlines, so every "\r" ends one), then the trajectory lines of a stage.
PROGRESS_OUTPUT = """\
09:30:00.000 - INFO - Executing task \x1b[96m'train-baseline'\x1b[0m
    train:   0%|          | 0/125 [00:00<?, ?it/s]
    train:  40%|####      | 50/125 [00:10<00:15,  5.00it/s, epoch=0.80, loss=0.612]
    train: 100%|##########| 125/125 [00:25<00:00,  5.00it/s, epoch=1.98, loss=0.402]
    dense baseline (resnet_tiny trained by the pipeline (2 epochs, seed 0)): val 84.10% test 83.90%
09:30:30.000 - INFO - Task \x1b[96m'train-baseline'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m
09:30:30.100 - INFO - Executing task \x1b[96m'prune-filters'\x1b[0m
    [dense 0] dense        params=239,610 MACs=16,571,264 val=84.10%   (0.1s)
    recovery:  45%|####5     | 9/20 [00:02<00:02,  4.50it/s, loss=0.301]
    [filter 0] prune        params=200,000 MACs=15,000,000 val=83.90% 40 channels  (5.1s)
    recovery:  50%|#####     | 10/20 [00:02<00:02,  4.50it/s, loss=0.280]
09:30:40.000 - INFO - Task \x1b[96m'prune-filters'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m
"""


class Terminal(io.StringIO):
    def isatty(self):
        return True


def visible(screen: str) -> list[str]:
    """What a terminal shows at the end: each "\\r\\x1b[K" erases the line drawn so far."""
    return [line.rsplit("\r\x1b[K", 1)[-1] for line in screen.split("\n") if line.rsplit("\r\x1b[K", 1)[-1]]


def test_a_terminal_gets_a_live_bar_that_leaves_one_line_per_step(tmp_path):
    screen = Terminal()
    live = []
    with StepConsole(tmp_path / "run.log", total_steps=8, stages={"prune-filters": 5}, out=screen) as console:
        for line in PROGRESS_OUTPUT.splitlines(keepends=True):
            sys.stdout.write(line)
            if console.step:
                live.append(console.live_line())
    drawn = screen.getvalue()
    assert "\r\x1b[K[1/8] train-baseline    running" in drawn
    assert "train |########............| 50/125" in drawn and "| 125/125" in drawn
    assert any("step 1/5  recovery |##########..........| 10/20  val 83.90% MACs 15,000,000" in x for x in live), live
    shown = visible(drawn)
    assert len(shown) == 2, shown  # the live line is erased before each step's own line
    assert shown[0].startswith("[1/8] train-baseline    ok") and "val 84.10% test 83.90%" in shown[0]
    assert shown[1].startswith("[2/8] prune-filters") and "1 pruning step(s)" in shown[1]
    log = (tmp_path / "run.log").read_text()
    assert "    train:  40%|####      | 50/125" in log  # every redraw stays in the log


def test_not_a_terminal_the_bars_add_nothing_to_the_console(tmp_path):
    screen, log, console = run_console(tmp_path, PROGRESS_OUTPUT)
    assert len(screen.splitlines()) == 2 and "\r" not in screen and "125/125" not in screen
    assert "125/125" in log


def test_quiet_draws_no_live_line_even_on_a_terminal(tmp_path):
    screen = Terminal()
    with StepConsole(tmp_path / "run.log", out=screen, quiet=True):
        sys.stdout.write(PROGRESS_OUTPUT)
    assert "\r" not in screen.getvalue() and len(screen.getvalue().splitlines()) == 2


def test_a_failing_steps_tail_leaves_out_its_bars(tmp_path):
    failing = PROGRESS_OUTPUT.replace("Task \x1b[96m'train-baseline'\x1b[0m finished with status \x1b[92mSUCCESS",
                                      "Task \x1b[96m'train-baseline'\x1b[0m finished with status \x1b[91mFAILURE")
    screen, _, console = run_console(tmp_path, failing)
    assert "    | dense baseline (resnet_tiny" in screen and "it/s" not in screen
    assert console.done[0]["status"] == "FAILURE"


def test_real_tqdm_through_kfps_subprocess_reader(tmp_path, monkeypatch):
    """A real bar in a child process, read by kfp.local's own step reader, shown by the console."""
    from kfp.local.subprocess_task_handler import run_local_subprocess

    monkeypatch.setenv("TQDM_MININTERVAL", "0")  # every redraw (the pipeline's run sets 1 s)
    child = ("import time\nfrom tqdm.auto import tqdm\n"
             "for _ in tqdm(range(30), desc='final fine-tune', dynamic_ncols=True):\n    time.sleep(0.002)\n"
             "print('[finetune 0] finetune     params=9 MACs=99 val=80.00%  30 steps (0.1s)', flush=True)\n")
    screen = Terminal()
    with StepConsole(tmp_path / "run.log", total_steps=1, out=screen) as console:
        print("10:00:00.000 - INFO - Executing task 'finetune'")
        assert run_local_subprocess([sys.executable, "-c", child]) == 0
        seen = console.progress
        print("10:00:01.000 - INFO - Task 'finetune' finished with status SUCCESS")
    assert seen is None  # the trajectory line after the bar ends it
    drawn = screen.getvalue()
    assert "final fine-tune |####################| 30/30" in drawn and "final fine-tune |" in drawn
    assert visible(drawn) == [visible(drawn)[0]] and visible(drawn)[0].startswith("[1/1] finetune          ok")
    assert "MACs 99, params 9, val 80.00%" in visible(drawn)[0]
    assert (tmp_path / "run.log").read_text().count("final fine-tune:") >= 10  # redraws became lines


def test_on_a_narrow_terminal_the_bar_narrows_and_the_counts_stay(tmp_path, monkeypatch):
    console = StepConsole(tmp_path / "run.log", total_steps=8, out=Terminal())
    monkeypatch.setattr(console, "_width", lambda: 80)
    console._start("prune-filters")
    console.stage_steps, console.progress = (3, 5), ("recovery", 12, 25)
    line = console.live_line()
    assert len(line) <= 80 and "step 3/5  recovery |" in line and line.endswith("| 12/25"), line
    console.progress = ("train", 48, 188)
    assert console.live_line().endswith("| 48/188") and "|#" in console.live_line()


PLAN_LINE = ("plan: optimizer step 370 ms, evaluation 3.4 s, scoring 2.0 s on cpu; up to 40 filter step(s) and 7 "
             "block tries (likely 6 and 7), 44 + 841 optimizer steps of recovery + fine-tune; estimated 9 min 57 s")


def test_the_time_plan_reaches_the_console_before_the_step_ends(tmp_path):
    marker = "    [filter 0] prune"
    with_plan = KFP_OUTPUT.replace(marker, f"    {PLAN_LINE}\n{marker}")
    screen, log, _ = run_console(tmp_path, with_plan)
    lines = screen.splitlines()
    assert len(lines) == 3, screen
    assert lines[1] == f"    {PLAN_LINE}" and lines[2].startswith("[2/8] prune-filters")
    assert PLAN_LINE in log
    quiet, _, _ = run_console(tmp_path, with_plan, quiet=True)
    assert "plan:" not in quiet
