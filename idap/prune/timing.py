"""Time as a budget: what a run will cost on this machine, measured before the first pruning step, and the
recovery budgets sized to fit ``recovery.time_budget``.

A run's time is almost all optimizer steps (per-step recoveries and the final fine-tune), validation passes
and scoring passes. :func:`measure_costs` times each once on the model about to be compressed (three recovery
steps on a copy, one evaluation, one scoring pass); :func:`plan_run` turns them and the recipe into a
:class:`RunPlan`: the most pruning steps the schedule can take, the ones a MACs target likely needs, the
optimizer steps that implies and the estimated wall time. With a time budget the plan shrinks the per-step
recovery, the final fine-tune and the calibration set until the likely run fits, never below a useful
minimum; the stages then stop when the time left is what the final fine-tune needs ("time budget reached").
The plan is JSON inside the run state, so a resumed run or the next pipeline step keeps the same budgets.

Example:
    >>> parse_duration("1h30m"), parse_duration("20m"), parse_duration("45s")
    (5400.0, 1200.0, 45.0)
    >>> format_duration(3725)
    '1 h 02 min'
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from idap.prune.config import Recipe, RecoveryConfig, parse_duration
from idap.prune.recovery import recover

__all__ = ["MIN_FINAL_STEPS", "MIN_STEP_RECOVERY", "RunPlan", "StepCosts", "format_duration", "measure_costs",
           "parse_duration", "plan_run", "time_summary"]

# The note of the step a stage stops at because the time budget cannot pay for another step.
TIME_BUDGET_REACHED = "time budget reached"
MIN_STEP_RECOVERY = 10  # optimizer steps: below this a recovery does not recover (spec §4's budgets are 100)
MIN_FINAL_STEPS = 30  # the final fine-tune a time budget keeps however little time is left
FINAL_EVALUATIONS = 2  # the final fine-tune is evaluated before (its guard) and after
MIN_CALIBRATION = 128  # samples: the flow scores' floor when a time budget shrinks the calibration set
SCORING_SHARE = 0.15  # the share of the stages' time scoring passes may take before calibration shrinks
# Without a time budget on a CPU, a plan estimated above this proposes one (the defaults are sized for a GPU).
PROPOSE_ABOVE_S = 30 * 60


def format_duration(seconds: float) -> str:
    """``3725`` -> ``1 h 02 min``; ``95`` -> ``1 min 35 s``; ``12.3`` -> ``12 s``."""
    seconds = max(0.0, float(seconds))
    if seconds >= 3600:
        h, m = divmod(round(seconds / 60), 60)
        return f"{h} h {m:02d} min"
    if seconds >= 60:
        m, s = divmod(round(seconds), 60)
        return f"{m} min {s:02d} s"
    return f"{seconds:.0f} s"


@dataclass(frozen=True)
class StepCosts:
    """Seconds one unit of work takes on this machine, measured on the model about to be compressed."""

    optimizer_step: float  # one recovery optimizer step (distillation, recovery.batch_size)
    evaluation: float  # one pass over the validation split
    scoring: float  # one flow-scoring pass over the calibration split
    calibration_size: int  # the calibration samples ``scoring`` was timed with
    device: str = "cpu"

    def __post_init__(self):
        for name in ("optimizer_step", "evaluation", "scoring"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"step cost {name} must be a finite number of seconds >= 0, got {value!r}")


@dataclass
class RunPlan:
    """What a run will do and cost, decided before its first pruning step (JSON in ``RunState.plan``)."""

    costs: StepCosts
    max_filter_steps: int  # the schedule's length, plus a top-up after stage 2 when one can run
    likely_filter_steps: int  # the steps a MACs target likely needs (the schedule's widths), else the maximum
    block_tries: int  # stage 2's likely candidates (each a recovery and an evaluation): K + patience at most
    max_block_tries: int  # every candidate block
    step_recovery: int  # optimizer steps after each pruning step
    final_steps: int  # optimizer steps of the final fine-tune
    calibration_size: int
    estimate_s: float  # the likely run, from the measured costs
    max_s: float  # every step the schedule can take
    time_budget: float | None = None  # seconds, or None
    final_requested: int = 0  # the recipe's final fine-tune before sizing: the most a run that saves time may give it
    spent_s: float = 0.0  # what the run had worked when it planned (dense evaluation, scoring, this probe)
    sized: list[str] = field(default_factory=list)  # what the time budget changed, in words
    advice: str = ""  # a proposal (a CPU run far longer than PROPOSE_ABOVE_S with no budget)

    @property
    def stage_steps(self) -> int:
        return self.likely_filter_steps + self.block_tries

    def final_seconds(self, optimizer_step: float | None = None) -> float:
        """What the final fine-tune costs: its optimizer steps and the evaluations before and after it
        (``optimizer_step``: seconds per step as observed so far, instead of the probe's)."""
        return self.final_steps * (optimizer_step or self.costs.optimizer_step) + FINAL_EVALUATIONS * self.costs.evaluation

    def stage_seconds(self) -> float:
        """What the likely stages cost."""
        return _stage_seconds(self, self.likely_filter_steps, self.block_tries)

    def pruning_step_seconds(self, optimizer_step: float | None = None) -> float:
        """What one pruning step costs: scoring, its recovery, the evaluation after it."""
        scoring = self.costs.scoring * self.calibration_size / max(1, self.costs.calibration_size)
        return scoring + self.step_recovery * (optimizer_step or self.costs.optimizer_step) + self.costs.evaluation

    def recipe_for(self, recipe: Recipe) -> Recipe:
        """``recipe`` with the budgets this plan sized (unchanged when the plan sized nothing)."""
        return recipe.with_overrides({"recovery.step_budget": self.step_recovery,
                                      "recovery.final_budget": self.final_steps,
                                      "calibration_size": self.calibration_size}) if self.sized else recipe

    def line(self) -> str:
        """The plan in one console line."""
        c = self.costs
        text = (f"plan: optimizer step {c.optimizer_step * 1000:.0f} ms, evaluation {c.evaluation:.1f} s, scoring "
                f"{c.scoring:.1f} s on {c.device}; up to {self.max_filter_steps} filter step(s) and {self.max_block_tries} "
                f"block tr{'y' if self.max_block_tries == 1 else 'ies'} (likely {self.likely_filter_steps} and "
                f"{self.block_tries}), "
                f"{self.step_recovery} + {self.final_steps} optimizer steps of recovery + fine-tune; "
                f"estimated {format_duration(self.estimate_s)} (at most {format_duration(self.max_s)})")
        if self.time_budget is not None:
            text += f"; time budget {format_duration(self.time_budget)}"
            text += f": sized {', '.join(self.sized)}" if self.sized else ": fits as configured"
        return text + (f"; {self.advice}" if self.advice else "")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict) -> RunPlan:
        doc = dict(doc)
        doc["costs"] = StepCosts(**doc["costs"])
        return cls(**doc)


def measure_costs(model: nn.Module, *, x: Tensor, y: Tensor, recovery: RecoveryConfig, device: torch.device,
                  evaluate: Callable[[nn.Module], float], score: Callable[[nn.Module], object], calibration_size: int,
                  evaluation: float | None = None, scoring: float | None = None, probe_steps: int = 4,
                  clock: Callable[[], float] = time.perf_counter) -> StepCosts:
    """Time the run's units of work on ``model``: ``probe_steps`` recovery steps on a copy distilled from
    ``model`` (the first is warm-up; the median of the rest counts), one ``evaluate`` and one ``score`` pass
    (unless their seconds are given). The global random state is restored afterwards, so planning changes no
    later draw. During the run the recoveries' own times replace the probe's (``RunContext.step_seconds``)."""
    ticks: list[float] = []
    with torch.random.fork_rng(devices=[]):
        student = copy.deepcopy(model)
        recover(student, model, x, y, steps=max(2, probe_steps), config=recovery, seed=0, device=device,
                on_step=lambda _: ticks.append(clock()))
        del student
        if evaluation is None:
            started = clock()
            evaluate(model)
            evaluation = clock() - started
        if scoring is None:
            started = clock()
            score(model)
            scoring = clock() - started
    gaps = sorted(b - a for a, b in zip(ticks, ticks[1:], strict=False))  # the first step (warm-up) has no gap
    step = gaps[len(gaps) // 2]  # the median: one step slowed by another process does not skew the plan
    return StepCosts(step, evaluation, scoring, calibration_size, device.type)


def likely_filter_steps(recipe: Recipe, macs_target: float | None) -> int:
    """Filter steps a MACs target likely needs: step t keeps 1 - p_t of the channels and a conv's MACs fall
    with the square of its widths, so the schedule reaches ``target`` after the first k steps whose kept
    widths, squared, are below 1 / target. Without a target, every step of the schedule."""
    cfg = recipe.filter
    if macs_target is None:
        return cfg.steps
    from idap.prune.schedule import prune_fraction

    width = 1.0
    for t in range(cfg.steps):
        width *= 1 - prune_fraction(t, cfg.steps, cfg.p0, cfg.alpha)
        if width * width <= 1 / macs_target:
            return t + 1
    return cfg.steps


def plan_run(recipe: Recipe, costs: StepCosts, *, blocks: int, macs_target: float | None = None,
             spent: float = 0.0) -> RunPlan:
    """The run's plan: its steps and estimated time and, with ``recipe.recovery.time_budget``, the recovery
    budgets sized so that the likely run fits (``spent``: seconds the run already used, e.g. the dense scoring).

    Args:
        blocks: stage 2's candidate blocks (0 when the model has none).
        macs_target: stage 1's share of the MACs target (``compress.filter_macs_target``).
    """
    r, rc = recipe, recipe.recovery
    filter_max = r.filter.steps if r.filter.enabled else 0
    filter_likely = likely_filter_steps(r, macs_target) if r.filter.enabled else 0
    tries_max = blocks if r.layer.enabled else 0
    tries = min(tries_max, r.layer.max_removals + r.layer.patience) if r.layer.patience else tries_max
    if r.layer.enabled and r.filter.enabled and r.target_macs_reduction is not None and blocks:
        filter_max += r.filter.steps  # the top-up after stage 2
    step_recovery, final, calib = rc.step_budget, rc.final_budget, r.calibration_size
    if rc.total_budget is not None:  # equal-budget runs: the fine-tune takes what the stages leave
        final = max(0, rc.total_budget - step_recovery * (filter_likely + tries))
    plan = RunPlan(costs, filter_max, filter_likely, tries, tries_max, step_recovery, final, calib, 0.0, 0.0, rc.time_budget)
    plan.spent_s, plan.final_requested = spent, final if rc.total_budget is None else 0
    if rc.time_budget is not None:
        _size(plan, rc.time_budget - spent)
    plan.estimate_s = spent + plan.stage_seconds() + plan.final_seconds()
    plan.max_s = spent + _stage_seconds(plan, plan.max_filter_steps, plan.max_block_tries) + plan.final_seconds()
    if rc.time_budget is not None and plan.estimate_s > rc.time_budget and plan.stage_steps:
        # even the minimums do not fit: the stages will stop by the clock after the steps that do
        fit = max(0, int((rc.time_budget - spent - plan.final_seconds()) / plan.pruning_step_seconds()))
        plan.estimate_s = spent + fit * plan.pruning_step_seconds() + plan.final_seconds()
        plan.advice = (f"at the minimum recovery only {fit} of the likely {plan.stage_steps} pruning steps fit: the "
                       "stages will stop by the clock (a larger budget, or a smaller recovery.batch_size, buys more)")
    if rc.time_budget is None and costs.device == "cpu" and plan.estimate_s > PROPOSE_ABOVE_S:
        plan.advice = (f"the recipe's recovery budgets are sized for a GPU: --time-budget "
                       f"{_round_minutes(PROPOSE_ABOVE_S)} (recovery.time_budget) sizes them to fit")
    return plan


def _stage_seconds(plan: RunPlan, filter_steps: int, block_tries: int) -> float:
    """The stages' seconds: every step a recovery and an evaluation, a filter step a scoring pass too, and
    stage 2 one scoring pass to rank its blocks."""
    c = plan.costs
    scoring = c.scoring * plan.calibration_size / max(1, c.calibration_size)
    ranking = scoring if block_tries else 0.0
    steps = filter_steps + block_tries
    return steps * (plan.step_recovery * c.optimizer_step + c.evaluation) + filter_steps * scoring + ranking


def _size(plan: RunPlan, available: float) -> None:
    """Shrink the plan's budgets until the likely run fits ``available`` seconds (never below the minimums)."""
    c, before = plan.costs, (plan.step_recovery, plan.final_steps, plan.calibration_size)
    opt = max(c.optimizer_step, 1e-9)
    if plan.stage_seconds() + plan.final_seconds() <= available:
        return
    stages_wanted = plan.stage_steps * plan.step_recovery
    # the final fine-tune keeps the share of the optimizer steps the recipe gives it, within [25 %, 60 %]
    share = min(0.6, max(0.25, plan.final_steps / max(1, plan.final_steps + stages_wanted)))
    plan.final_steps = max(MIN_FINAL_STEPS, min(plan.final_steps, int((available * share - FINAL_EVALUATIONS * c.evaluation) / opt)))
    left = max(0.0, available - plan.final_seconds())
    if plan.stage_steps:
        scoring = plan.likely_filter_steps * c.scoring
        if scoring > SCORING_SHARE * left and plan.calibration_size > MIN_CALIBRATION:
            fraction = SCORING_SHARE * left / scoring
            plan.calibration_size = max(MIN_CALIBRATION, min(plan.calibration_size,
                                                             int(plan.calibration_size * fraction)))
        overhead = plan.stage_seconds() - plan.stage_steps * plan.step_recovery * opt  # scoring, evaluations
        per_step = (left - overhead) / plan.stage_steps
        plan.step_recovery = max(MIN_STEP_RECOVERY, min(plan.step_recovery, int(per_step / opt)))
    names = ("recovery.step_budget", "recovery.final_budget", "calibration_size")
    after = (plan.step_recovery, plan.final_steps, plan.calibration_size)
    plan.sized = [f"{n} {a} -> {b}" for n, a, b in zip(names, before, after, strict=True) if a != b]


def _round_minutes(seconds: float) -> str:
    return f"{round(seconds / 60)}m"



def time_summary(plan: RunPlan | None, actual_s: float, steps) -> dict:
    """The report's ``time`` section: the plan, its estimate against the actual seconds, and whether (and
    where) the time budget stopped the run, in one verdict sentence."""
    if plan is None:
        return {"actual_s": round(actual_s, 1)}
    stopped = [s for s in steps if s.action == "stop" and TIME_BUDGET_REACHED in s.note]
    kept = sum(1 for s in steps if s.action in ("prune", "remove_block"))
    final = next((s.recovery_steps for s in reversed(steps) if s.action == "finetune"), 0)
    verdict = (f"time budget reached ({format_duration(plan.time_budget or 0)}): the stages stopped at "
               f"{stopped[0].stage} step {stopped[0].index} with {kept} pruning step(s) kept; the final fine-tune ran "
               f"{final} step(s); {format_duration(actual_s)} in all" if stopped else "")
    return {"budget_s": plan.time_budget, "estimate_s": round(plan.estimate_s, 1), "max_s": round(plan.max_s, 1),
            "actual_s": round(actual_s, 1),
            "estimate_error_pct": round(100 * (plan.estimate_s - actual_s) / max(actual_s, 1e-9), 1),
            "budget_reached": bool(stopped), "verdict": verdict, "plan": plan.to_json()}
