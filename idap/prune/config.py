"""Recipes: every setting of an IDAP++ run, as frozen dataclasses loadable from YAML.

A recipe is a versioned artifact (like SparseML's): it is saved beside every compressed model and
logged with every run, so a result can be reproduced from it alone.

Example:
    >>> r = Recipe.from_dict({"max_accuracy_drop": 1.0, "filter": {"p0": 0.1}})
    >>> r.with_overrides(["filter.steps=5", "seed=3"]).filter.steps
    5
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

RECIPE_VERSION = 1


class ConfigError(ValueError):
    """An invalid recipe setting; the message names the field and its valid range."""


def _check(cond: bool, name: str, rule: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{name} must be {rule}, got {value!r}")


def _one_of(name: str, value: Any, choices: tuple) -> None:
    _check(value in choices, name, f"one of {list(choices)}", value)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)")


def parse_duration(value: Any, name: str = "time budget") -> float:
    """Seconds of a duration: ``"20m"``, ``"1h30m"``, ``"1.5h"``, ``"90s"``, or a number of seconds.

    Example:
        >>> parse_duration("1h30m"), parse_duration(90)
        (5400.0, 90.0)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip().lower().replace(" ", "")
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            try:
                seconds = float(text)
            except ValueError:
                raise ConfigError(f"{name} must be a duration such as 90s, 20m, 1h or 1h30m (or seconds), "
                                  f"got {value!r}") from None
        else:
            seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    else:
        raise ConfigError(f"{name} must be a duration such as 90s, 20m, 1h or 1h30m (or seconds), got {value!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{name} must be a positive duration, got {value!r}")
    return seconds


def _check_types(obj: Any, prefix: str) -> None:
    """Reject values whose type does not match the field's default (YAML gives strings easily)."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        name = f"{prefix}{f.name}"
        if default is None or isinstance(default, (FilterStageConfig, LayerStageConfig, RecoveryConfig)):
            if f.name.startswith("target_") and value is not None:
                _check(isinstance(value, (int, float)) and not isinstance(value, bool), name, "a number", value)
            continue
        if isinstance(default, bool):
            _check(isinstance(value, bool), name, "true or false", value)
        elif isinstance(default, int):
            _check(isinstance(value, int) and not isinstance(value, bool), name, "an integer", value)
        elif isinstance(default, float):
            _check(isinstance(value, (int, float)) and not isinstance(value, bool), name, "a number", value)
        elif isinstance(default, str):
            _check(isinstance(value, str), name, "a string", value)


@dataclass(frozen=True)
class FilterStageConfig:
    """Stage 1: iterative, globally ranked channel pruning (spec §2)."""

    enabled: bool = True
    importance: str = "idap"  # a registered criterion (idap.prune.importance.list_importances): idap, l1, taylor, ...
    p0: float = 0.05  # first step's fraction of the prunable channels
    steps: int = 20  # T, the schedule's length
    alpha: float = 1.5  # p_t = p0 * (1 + t/T) ** alpha
    min_channels: int = 8  # per-layer floor: keep at least max(min_channels, min_fraction * original)
    min_fraction: float = 0.1
    # post: ReLU of the following norm's output; pre: ReLU of the raw conv/linear output (the authors' parity).
    # post is the default: it won the benchmark's ablation at 3x fewer MACs, 2 seeds (validation +2.3 pp on
    # ResNet-20, +1.5 pp on ResNet-56).
    score_point: str = "post"
    score_pointwise: bool = True  # score 1x1 convs (the authors' code never did)
    prune_heads: bool = True  # attention heads of ViTs, ranked by the head score
    # How channels of different layers are compared: "score" ranks the raw scores globally (the spec);
    # "score_per_mac" divides each group's scores by the MACs one of its channels costs, so a MACs target
    # is reached by removing fewer channels. On ResNets it helps (benchmark, 3x fewer MACs, 2 seeds: IDAP++
    # +1.86 pp test on ResNet-20, +0.32 pp test / -0.43 pp validation on ResNet-56, faster models on both), but
    # a step still removes p_t of the channels, MAC-heavy ones first, so on a small CNN whose parameters sit in
    # its classifier one step takes most of the conv MACs: `make demo` (cnn_small) rolled back its second step
    # and compressed nothing. Sizing steps in MACs fixed that and lost on the ResNets
    # (benchmarks/results/experiments/), so the spec's ranking stays the default: opt in for ResNet-like nets.
    ranking: str = "score"
    # Kept channel counts are rounded to a multiple of this (nearest, never below the floor); 1 = the spec
    # (no rounding). 8 is the default: ONNX Runtime's NCHWc layout (its fast conv path on AVX2 CPUs) needs
    # widths in multiples of 8; other widths fall back to plain convs with reorders around them, and
    # depthwise convs with odd groups run one group at a time. Measured (benchmarks/onnx_widths.py,
    # benchmarks/results/onnx-widths/, 1 thread, batch 1): MobileNetV2 pruned to 2x fewer MACs ran 0.96x
    # dense in ONNX Runtime with odd widths, 2.11x rounded to 8 (ResNet-20: 0.97x vs 1.54x). Use 16 on AVX-512.
    round_to: int = 8
    # Halvings of the step size a rollback may spend before stage 1 ends (NNCF's adaptive compression level):
    # a step that breaks the budget is retried at half the size, which later steps keep. 0 = the spec (the
    # first rollback ends stage 1) stays the default: the reduced ablation (benchmarks/results/rollback-retries/)
    # found one gain in four runs (digits: 1.22x fewer MACs instead of none) and ties elsewhere (MobileNetV2's
    # first step broke the budget even halved three times).
    rollback_retries: int = 0

    def __post_init__(self):
        _check_types(self, "filter.")
        _check(isinstance(self.round_to, int) and 1 <= self.round_to <= 256, "filter.round_to", "an integer in [1, 256]", self.round_to)
        _check(isinstance(self.rollback_retries, int) and 0 <= self.rollback_retries <= 20, "filter.rollback_retries",
               "an integer in [0, 20]", self.rollback_retries)
        _one_of("filter.ranking", self.ranking, ("score", "score_per_mac"))
        from idap.prune.importance import (
            list_importances,  # the registry, so a registered criterion is valid here
        )

        _one_of("filter.importance", self.importance, tuple(list_importances()))
        _check(0 < self.p0 < 1, "filter.p0", "in (0, 1)", self.p0)
        _check(isinstance(self.steps, int) and 1 <= self.steps <= 1000, "filter.steps", "an integer in [1, 1000]", self.steps)
        _check(0 <= self.alpha <= 10, "filter.alpha", "in [0, 10]", self.alpha)
        _check(isinstance(self.min_channels, int) and self.min_channels >= 1, "filter.min_channels", "an integer >= 1", self.min_channels)
        _check(0 <= self.min_fraction < 1, "filter.min_fraction", "in [0, 1)", self.min_fraction)
        _one_of("filter.score_point", self.score_point, ("pre", "post"))


@dataclass(frozen=True)
class LayerStageConfig:
    """Stage 2: flow-guided removal of whole shape-preserving blocks (spec §3)."""

    enabled: bool = True
    block_score: str = "divergence"  # a registered block score (idap.prune.divergence.list_block_scores)
    max_removals: int = 5  # K
    epsilon: float = 0.5  # max accuracy drop (pp) since stage 2 began, per accepted block
    exact_removals: bool = False  # benchmark mode: remove exactly max_removals blocks, no accept/revert test
    # Share of a MACs target (in log space) left to this stage: stage 1 stops at target ** (1 - share),
    # blocks take it the rest of the way. 0 = stage 1 may reach the whole target on its own.
    target_share: float = 0.0
    # When the best remaining block would take the model past its MACs target: "skip" it and try the next
    # (lower-ranked, i.e. more important) block, or "stop" and let stage 1 top up the gap with filters.
    overshoot: str = "skip"
    # Stop the stage after this many blocks in a row proved essential: candidates are visited from the
    # least transforming up, so the rest rank as more important still, and each try costs a recovery that a
    # shared budget (recovery.total_budget) then takes from the final fine-tune. 0 = visit every candidate
    # (the spec). 2: measured in budget mode (benchmarks/results/layer-patience.md): the same MACs, test
    # +0.35 pp on two seeds, 22 % fewer recovery steps; no cached stage-2 run accepted a block after 2 misses.
    patience: int = 2

    def __post_init__(self):
        _check_types(self, "layer.")
        _one_of("layer.overshoot", self.overshoot, ("skip", "stop"))
        from idap.prune.divergence import list_block_scores

        _one_of("layer.block_score", self.block_score, tuple(list_block_scores()))
        _check(isinstance(self.max_removals, int) and 0 <= self.max_removals <= 1000, "layer.max_removals", "an integer in [0, 1000]", self.max_removals)
        _check(0 <= self.epsilon <= 100, "layer.epsilon", "in [0, 100] percentage points", self.epsilon)
        _check(0 <= self.target_share < 1, "layer.target_share", "in [0, 1)", self.target_share)
        _check(isinstance(self.patience, int) and 0 <= self.patience <= 1000, "layer.patience",
               "an integer in [0, 1000] (0 = visit every candidate)", self.patience)


@dataclass(frozen=True)
class RecoveryConfig:
    """Distillation fine-tuning after each step and at the end (spec §4)."""

    step_budget: int = 100  # optimizer steps after each pruning step / block removal
    final_budget: int = 1500  # optimizer steps of the final fine-tune (never 0 by default)
    # When set, the final fine-tune takes whatever the per-step recoveries left of this many optimizer steps
    # (equal-budget comparisons: every method spends exactly total_budget); final_budget is then ignored.
    total_budget: int | None = None
    # With total_budget: the share of it kept for the final fine-tune. The per-step recoveries share the rest
    # (each gets step_budget while it lasts, then less, then none), so a run that takes many pruning steps
    # still ends with a real fine-tune. 0 = per-step recoveries first, the fine-tune takes what is left.
    final_reserve: float = 0.0
    batch_size: int = 128
    lr: float = 1e-3
    final_lr: float = 1e-3
    weight_decay: float = 1e-4
    lambda_feat: float = 0.5  # feature L1 at the activation taps (parity)
    lambda_kd: float = 0.0  # logit KD weight (parity: off)
    tau: float = 4.0
    # The per-step recovery's teacher: the model before this step (the authors' parity) or the dense model.
    # dense: +1.4 pp validation on ResNet-56 with the raw ranking, a tie (within 0.02 pp) on ResNet-20 and -56
    # with per-MAC ranking, and `make demo` rolled back a step earlier with it: the parity choice stays.
    # The final fine-tune always distils from the dense model.
    teacher: str = "previous"
    # Learning rate within each short recovery: cosine decay to 0 (measured: a constant AdamW 1e-3 leaves
    # a converged ResNet-20 ~2.5 pp below where it started after 100 steps; cosine ends within 0.2 pp).
    schedule: str = "cosine"  # cosine | constant (the authors' code)
    augment: bool = True  # random shifts / flips of the training tensors
    # Wall-time budget of the compression (seconds; "20m", "1h" in YAML and on the command line): the run
    # measures its step times first and sizes step_budget, final_budget and calibration_size to fit, and the
    # stages stop when the time left is what the final fine-tune needs (idap.prune.timing). Empty = no limit.
    time_budget: float | None = None

    def __post_init__(self):
        _check_types(self, "recovery.")
        if self.time_budget is not None:
            object.__setattr__(self, "time_budget", parse_duration(self.time_budget, "recovery.time_budget"))
        for name in ("step_budget", "final_budget"):
            v = getattr(self, name)
            _check(isinstance(v, int) and 0 <= v <= 10**7, f"recovery.{name}", "an integer >= 0", v)
        _check(self.total_budget is None or (isinstance(self.total_budget, int) and self.total_budget >= 0),
               "recovery.total_budget", "empty or an integer >= 0", self.total_budget)
        _check(0 <= self.final_reserve < 1, "recovery.final_reserve", "in [0, 1)", self.final_reserve)
        _check(isinstance(self.batch_size, int) and 1 <= self.batch_size <= 65536, "recovery.batch_size", "an integer in [1, 65536]", self.batch_size)
        for name in ("lr", "final_lr"):
            v = getattr(self, name)
            _check(0 < v < 10, f"recovery.{name}", "in (0, 10)", v)
        _check(0 <= self.weight_decay < 1, "recovery.weight_decay", "in [0, 1)", self.weight_decay)
        _check(self.lambda_feat >= 0, "recovery.lambda_feat", ">= 0", self.lambda_feat)
        _check(self.lambda_kd >= 0, "recovery.lambda_kd", ">= 0", self.lambda_kd)
        _check(self.tau > 0, "recovery.tau", "> 0", self.tau)
        _one_of("recovery.teacher", self.teacher, ("previous", "dense"))
        _one_of("recovery.schedule", self.schedule, ("cosine", "constant"))


@dataclass(frozen=True)
class Recipe:
    """All settings of one compression run. Percentages are percentage points (pp)."""

    version: int = RECIPE_VERSION
    seed: int = 0
    max_accuracy_drop: float = 1.0  # budget Δ, pp of validation accuracy vs the dense model
    # Extra pp the stages may spend beyond Δ in anticipation of the final fine-tune's recovery (the stages
    # only recover briefly). The final model is still measured against Δ and the report says if it is out.
    stage_slack: float = 0.0
    target_macs_reduction: float | None = None  # e.g. 2.0 = stop at 2x fewer MACs
    target_params_reduction: float | None = None
    calibration_size: int = 2048
    validation_size: int = 5000
    eval_batch_size: int = 512
    device: str = "auto"  # auto | cpu | cuda
    filter: FilterStageConfig = field(default_factory=FilterStageConfig)
    layer: LayerStageConfig = field(default_factory=LayerStageConfig)
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)

    def __post_init__(self):
        _check_types(self, "")
        _check(self.version == RECIPE_VERSION, "version", f"{RECIPE_VERSION}", self.version)
        _check(isinstance(self.seed, int) and self.seed >= 0, "seed", "an integer >= 0", self.seed)
        _check(0 <= self.max_accuracy_drop <= 100, "max_accuracy_drop", "in [0, 100] percentage points", self.max_accuracy_drop)
        _check(0 <= self.stage_slack <= 100, "stage_slack", "in [0, 100] percentage points", self.stage_slack)
        for name in ("target_macs_reduction", "target_params_reduction"):
            v = getattr(self, name)
            _check(v is None or 1 < v <= 1000, name, "empty or a factor in (1, 1000] (2.0 = half)", v)
        _check(isinstance(self.calibration_size, int) and self.calibration_size >= 1, "calibration_size", "an integer >= 1", self.calibration_size)
        _check(isinstance(self.validation_size, int) and self.validation_size >= 1, "validation_size", "an integer >= 1", self.validation_size)
        _check(isinstance(self.eval_batch_size, int) and self.eval_batch_size >= 1, "eval_batch_size", "an integer >= 1", self.eval_batch_size)
        _one_of("device", self.device, ("auto", "cpu", "cuda"))

    @property
    def stage_budget(self) -> float:
        """The accuracy drop (pp) the stages' accept / roll-back decisions allow: Δ + stage_slack."""
        return self.max_accuracy_drop + self.stage_slack

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict | None) -> Recipe:
        data = dict(data or {})
        nested = {"filter": FilterStageConfig, "layer": LayerStageConfig, "recovery": RecoveryConfig}
        kwargs: dict[str, Any] = {}
        valid = {f.name for f in fields(cls)}
        for key, value in data.items():
            if key not in valid:
                raise ConfigError(f"unknown recipe field {key!r}; valid fields: {sorted(valid)}")
            if key in nested:
                if not isinstance(value, dict):
                    raise ConfigError(f"{key} must be a mapping, got {value!r}")
                sub_valid = {f.name for f in fields(nested[key])}
                for sub in value:
                    if sub not in sub_valid:
                        raise ConfigError(f"unknown recipe field {key}.{sub!r}; valid fields: {sorted(sub_valid)}")
                kwargs[key] = nested[key](**value)
            else:
                kwargs[key] = value
        try:
            return cls(**kwargs)
        except TypeError as exc:  # pragma: no cover - guarded above
            raise ConfigError(str(exc)) from exc

    @classmethod
    def from_yaml(cls, path: str | Path) -> Recipe:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe file {path} does not exist")
        try:
            data = yaml.load(path.read_text(), Loader=_Loader) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"recipe file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"recipe file {path} must hold a mapping, got {type(data).__name__}")
        return cls.from_dict(data)

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> Recipe:
        """Apply `section.field=value` overrides (values parsed as YAML scalars)."""
        items = overrides.items() if isinstance(overrides, dict) else (_split_override(o) for o in overrides)
        data = self.to_dict()
        for key, value in items:
            parts = key.split(".")
            target = data
            for part in parts[:-1]:
                if not isinstance(target.get(part), dict):
                    raise ConfigError(f"unknown recipe field {key!r}")
                target = target[part]
            if parts[-1] not in target:
                raise ConfigError(f"unknown recipe field {key!r}")
            target[parts[-1]] = value
        return Recipe.from_dict(data)

    def replace(self, **changes) -> Recipe:
        return replace(self, **changes)

    # ---- serialization ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """Flattened `section.field` view, e.g. for MLflow params."""
        out: dict[str, Any] = {}
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out

    def digest(self) -> str:
        """Short content hash of the recipe, for lineage tags."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``5e-5`` (no dot) as a string; recipes read it as the number everyone means (YAML 1.2)."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _split_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.field=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.load(raw, Loader=_Loader) if raw != "" else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: cannot parse value: {exc}") from exc
    return key.strip(), value


__all__ = ["ConfigError", "FilterStageConfig", "LayerStageConfig", "RecoveryConfig", "Recipe", "parse_duration"]
