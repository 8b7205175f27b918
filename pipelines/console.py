"""What ``idap pipeline run`` shows while kfp.local runs: one line per step, the full logs in a file.

kfp.local writes everything to ``sys.stdout``: its own log records (the root logger, through a handler
it installs on ``sys.stdout`` when a run starts), and every step's subprocess output line by line with
``print`` (the executor's JSON dumps of each task's inputs and outputs included, about a thousand lines
per run). :class:`StepConsole` stands in for ``sys.stdout`` / ``sys.stderr`` during the run: every
line goes to the log file, and the console gets

* one line per step when it ends: its index, name, status, seconds and what it did, taken from the
  step's own output (the trajectory lines ``[filter 3] prune ...``, ``dense baseline ...: val ...``);
* on a terminal, a live status line for the running step, redrawn in place (``\r``): its seconds, the
  stage's trajectory steps out of the recipe's number (``step 2/5``), and a bar for the loop running now,
  read from the tqdm lines the long steps write (``train``, ``recovery``, ``final fine-tune``: ``n/total``,
  at most one a second, ``TQDM_MININTERVAL``). Not on a terminal (CI logs) nothing is drawn: the console
  stays one line per step, and the bars' lines are in the log only;
* on failure, the failing step's last lines and the path of the log.

``verbose`` passes every line to the console as well (the old behaviour); ``quiet`` drops the live line.

Example:
    >>> with StepConsole(Path("run.log"), total_steps=8) as console:   # doctest: +SKIP
    ...     pipeline(**arguments)
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
STARTED = re.compile(r"Executing task '([^']+)'")
FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
TRAJECTORY = re.compile(r"^\s*\[(dense|filter|layer|finetune) (\d+)\] (\S+)\s+params=([\d,]+) MACs=([\d,]+) val=([\d.]+)%(.*)$")
TQDM = re.compile(r"(?:^|\s)(?:(?P<desc>[^:|]{1,40}):\s+)?(?P<pct>\d{1,3})%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)")
# A step's own one-line results, as the components print them.
HEADLINES = re.compile(r"^\s*(data: |dense baseline |compressed: |registered |layer stage disabled|profile: |scored )")
PLAN = re.compile(r"^\s*plan: optimizer step ")
# kfp and MLflow log through these; a quiet run keeps them out of the console (they still reach the log).
NOISY_LOGGERS = ("kfp", "mlflow", "alembic", "urllib3", "botocore", "git")
TAIL_LINES = 25
BAR_WIDTH = 20
LIVE_WIDTH = 150  # a live line longer than the terminal would wrap, and \r would not erase it
KFP_INDENT = " " * 4  # kfp.local indents a step's output by four spaces


class StepConsole:
    """A stand-in for ``sys.stdout`` / ``sys.stderr`` while a local pipeline runs (module docstring)."""

    def __init__(self, log_path: Path, *, total_steps: int | None = None, stages: dict | None = None,
                 verbose: bool = False, quiet: bool = False, out: TextIO | None = None):
        self.log_path = Path(log_path)
        self.total = total_steps
        self.stages = stages or {}  # {"prune-filters": 10}: steps expected from a trajectory stage
        self.verbose, self.quiet = verbose, quiet
        self.out = out or sys.__stdout__
        self.live = not quiet and not verbose and self.out.isatty()
        self.index = 0
        self.step: str | None = None
        self.started = 0.0
        self.progress: tuple[str, int, int] | None = None  # the running loop's tqdm bar: desc, n, total
        self.stage_steps: tuple[int, int] | None = None  # trajectory steps so far / the recipe's number
        self.done: list[dict] = []
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._records: list[dict] = []
        self._headline = ""
        self._buffer = ""
        self._lock = threading.RLock()
        self._stop = threading.Event()

    # --- the file-like interface kfp, print and logging write to ---------------------------------
    def write(self, text: str) -> int:
        with self._lock:
            self._buffer += text
            *lines, self._buffer = re.split(r"\r\n|\n|\r", self._buffer)
            for line in lines:
                self._line(line)
        return len(text)

    def flush(self) -> None:
        with contextlib.suppress(Exception):
            self._log.flush()

    def isatty(self) -> bool:
        return False  # nothing downstream should draw its own bars into the log

    # --- context: swap the streams, quiet the loggers --------------------------------------------
    def __enter__(self) -> StepConsole:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in __exit__)
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout = sys.stderr = self
        self._levels = {}
        if not self.verbose:
            for name in NOISY_LOGGERS:
                logger = logging.getLogger(name)
                self._levels[name] = logger.level
                logger.setLevel(logging.WARNING)
        if self.live:
            threading.Thread(target=self._tick, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        with self._lock:
            if self._buffer:
                self._line(self._buffer)
                self._buffer = ""
            self._clear_live()
            sys.stdout, sys.stderr = self._saved
            for name, level in self._levels.items():
                logging.getLogger(name).setLevel(level)
            self._log.close()

    # --- lines -----------------------------------------------------------------------------------
    def _line(self, raw: str) -> None:
        line = ANSI.sub("", raw).rstrip()
        self._log.write(line + "\n")
        if self.verbose:
            self._print(line)
        if m := STARTED.search(line):
            self._start(m.group(1))
            return
        if m := FINISHED.search(line):
            self._finish(m.group(1), m.group(2))
            return
        if self.step is None or not line.strip():
            return
        if m := TQDM.search(line):  # a bar's redraw: the live line, never the failure tail
            self.progress = ((m.group("desc") or "").strip(), int(m.group("n")), int(m.group("total")))
            self._draw()
            return
        self._tail.append(line.removeprefix(KFP_INDENT))
        if m := TRAJECTORY.match(line):
            self._records.append({"stage": m.group(1), "index": int(m.group(2)), "action": m.group(3),
                                  "params": int(m.group(4).replace(",", "")), "macs": int(m.group(5).replace(",", "")),
                                  "val_acc": float(m.group(6)), "rest": m.group(7).strip()})
            expected = self.stages.get(self.step)
            done = sum(1 for r in self._records if r["stage"] != "dense")
            if expected:
                self.stage_steps = (min(done, expected), expected)
            self.progress = None  # that step's recovery has ended
            self._draw()
        elif HEADLINES.match(line):
            self._headline = line.strip()
        elif PLAN.match(line) and not self.verbose and not self.quiet:
            # the run's time plan (idap.prune.timing): worth seeing before the steps it estimates run
            self._clear_live()
            self._print(f"    {line.strip()}")
            self._draw()

    def _start(self, name: str) -> None:
        self.index += 1
        self.step, self.started, self.progress, self.stage_steps = name, time.monotonic(), None, None
        self._tail.clear()
        self._records, self._headline = [], ""
        self._draw()

    def _finish(self, name: str, status: str) -> None:
        seconds = time.monotonic() - self.started
        what = describe(name, self._records, self._headline)
        self.done.append({"step": name, "status": status, "seconds": seconds, "what": what,
                          "tail": list(self._tail) if status != "SUCCESS" else []})
        self._clear_live()
        if not self.verbose:
            mark = "ok" if status == "SUCCESS" else status
            self._print(f"{self._counter()} {name:<17} {mark:<7} {seconds:6.1f}s  {what}".rstrip())
            if status != "SUCCESS":
                for tail in self._tail:
                    self._print(f"    | {tail}")
        self.step = None

    def _counter(self) -> str:
        return f"[{self.index}/{self.total}]" if self.total else f"[{self.index}]"

    # --- the live line (terminals only) ----------------------------------------------------------
    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                self._draw()

    def _draw(self) -> None:
        if not self.live or self.step is None:
            return
        self.out.write("\r\x1b[K" + self.live_line())
        self.out.flush()
        self._drawn = True

    def live_line(self) -> str:
        """The running step's status as the terminal shows it (no control characters)."""
        width = self._width()
        elapsed = time.monotonic() - self.started
        parts = [f"{self._counter()} {self.step:<17} running {elapsed:5.0f}s"]
        if self.stage_steps:
            parts.append(f"step {self.stage_steps[0]}/{self.stage_steps[1]}")
        if self.progress:
            desc, n, total = self.progress
            label, counts = f"{desc} " if desc else "", f"| {n}/{total}"
            # the bar narrows before the counts would be cut off on a narrow terminal
            room = width - sum(len(p) + 2 for p in parts) - len(label) - len(counts) - 1
            bar = max(5, min(BAR_WIDTH, room))
            filled = int(bar * min(n, total) / max(1, total))
            parts.append(f"{label}|{'#' * filled}{'.' * (bar - filled)}{counts}")
        last = next((r for r in reversed(self._records) if r["action"] != "dense"), None)
        if last:
            parts.append(f"val {last['val_acc']:.2f}% MACs {last['macs']:,}")
        return "  ".join(parts)[:width]

    def _width(self) -> int:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            return min(LIVE_WIDTH, os.get_terminal_size(self.out.fileno()).columns - 1)
        return LIVE_WIDTH

    def _clear_live(self) -> None:
        if self.live and getattr(self, "_drawn", False):
            self.out.write("\r\x1b[K")
            self.out.flush()
            self._drawn = False

    def _print(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def describe(step: str, records: list[dict], headline: str) -> str:
    """What a step did, in a few words, from its trajectory lines or its own result line."""
    records = [r for r in records if r["stage"] != "dense"]  # the dense reference a step starts from
    if records:
        kept = [r for r in records if r["action"] in ("prune", "remove_block", "finetune")]
        first, last = records[0], (kept or records)[-1]
        if any(r["stage"] == "layer" for r in records):
            removed = [r["rest"].split()[0] for r in records if r["action"] == "remove_block" and r["rest"]]
            reverted = sum(1 for r in records if r["action"] == "revert_block")
            parts = [f"removed {len(removed)} block(s)" + (f" ({', '.join(removed)})" if removed else "")]
            if reverted:
                parts.append(f"{reverted} kept as essential")
            topup = sum(1 for r in records if r["stage"] == "filter" and r["action"] == "prune")
            if topup:
                parts.append(f"{topup} filter top-up step(s)")
            if not kept:
                return f"{', '.join(parts)}; MACs unchanged"
            return f"{', '.join(parts)}; MACs {last['macs']:,}, val {last['val_acc']:.2f}%"
        if first["stage"] == "filter":
            stops = [r for r in records if r["action"] in ("rollback", "stop")]
            why = ""
            if stops and stops[-1]["action"] == "rollback":
                drop = re.search(r"accuracy drop [\d.]+ pp > budget [\d.]+ pp", stops[-1]["rest"])
                why = f", step {stops[-1]['index']} rolled back ({drop.group(0) if drop else 'accuracy budget'})"
            elif stops:
                why = f", then stopped ({re.sub(r' [(][0-9.]+s[)]$', '', stops[-1]['rest'])})"
            if not kept:
                return f"0 pruning steps{why}; MACs unchanged"
            return f"{len(kept)} pruning step(s){why}; MACs {last['macs']:,}, params {last['params']:,}, val {last['val_acc']:.2f}%"
        return f"MACs {last['macs']:,}, params {last['params']:,}, val {last['val_acc']:.2f}%"
    text = re.sub(r" -> \S+$", "", headline)  # the artifact path: in the log, and printed at the end
    text = re.sub(r"[{}']", "", text.removeprefix("data: ").removeprefix("compressed: "))
    return text[:110] + ("..." if len(text) > 110 else "")
