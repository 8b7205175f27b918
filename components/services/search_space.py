"""The search space of ``idap tune``: a YAML file keyed by dotted recipe paths, checked before Ray starts.

``filter.p0: {loguniform: [0.02, 0.2]}``. Distributions: ``uniform``, ``loguniform``, ``quniform`` [lo, hi, q],
``randint`` [lo, hi] (both ends included) and ``choice`` [values]. Besides the dimensions a space says how a
trial is judged (``objective``, ``reduction``, ``budget_pp``) and how many trials run (``num_samples``).
:meth:`SearchSpace.validate` checks every dimension against the recipe schema (the field exists, may be
searched, every bound is a valid value of it, the base recipe's value lies inside).

Example:
    >>> space = SearchSpace.from_yaml("recipes/search/default.yaml")            # doctest: +SKIP
    >>> space.validate(Recipe())                                                # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from idap.prune.config import ConfigError, Recipe

__all__ = ["DEFAULT_SPACE", "Dimension", "SearchSpace", "SearchSpaceError"]

OBJECTIVES = ("constrained", "multi")
REDUCTIONS = ("macs", "params", "speedup")
DISTRIBUTIONS = {"uniform": "[lo, hi]", "loguniform": "[lo, hi]", "quniform": "[lo, hi, q]",
                 "randint": "[lo, hi]", "choice": "[value, ...]"}
# Fields a trial may not change: they decide the splits every trial is compared on, or where it runs.
UNSEARCHABLE = {
    "version": "it is the recipe format", "seed": "it changes the data splits the trials are compared on",
    "calibration_size": "it changes the data splits the trials are compared on",
    "validation_size": "it changes the data splits the trials are compared on",
    "device": "trials run where Ray places them", "eval_batch_size": "it does not change the result",
}
SPACE_KEYS = ("description", "objective", "reduction", "budget_pp", "num_samples", "space")
DEFAULT_SPACE = Path(__file__).resolve().parents[2] / "recipes" / "search" / "default.yaml"


class SearchSpaceError(ConfigError):
    """A search space that cannot be searched; the message names the field and the problem."""



@dataclass(frozen=True)
class Dimension:
    """One searched recipe field and its distribution."""

    path: str
    kind: str
    args: tuple

    def domain(self):
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.args))
        if self.kind == "randint":  # Tune's upper bound is exclusive, the YAML's inclusive
            return tune.randint(self.args[0], self.args[1] + 1)
        return getattr(tune, self.kind)(*self.args)

    def contains(self, value) -> bool:
        if self.kind == "choice":
            return any(value == v and type(value) is type(v) for v in self.args)
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        return self.args[0] <= value <= self.args[1] and (self.kind != "randint" or isinstance(value, int))

    def corners(self) -> tuple:
        return self.args if self.kind == "choice" else tuple(self.args[:2])

    def to_yaml(self) -> dict:
        return {self.kind: list(self.args)}


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _dimension(path: str, spec, source: str) -> Dimension:
    where = f"{source}: {path}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise SearchSpaceError(f"{where} must be one distribution such as {{uniform: [lo, hi]}}, got {spec!r}; "
                               f"valid: {sorted(DISTRIBUTIONS)}")
    [(kind, args)] = spec.items()
    if kind not in DISTRIBUTIONS:
        raise SearchSpaceError(f"{where}: unknown distribution {kind!r}; valid: {sorted(DISTRIBUTIONS)}")
    if not isinstance(args, list) or not args:
        raise SearchSpaceError(f"{where}: {kind} takes a list {DISTRIBUTIONS[kind]}, got {args!r}")
    if kind == "choice":
        if len({json.dumps(a, sort_keys=True) for a in args}) != len(args):
            raise SearchSpaceError(f"{where}: choice lists a value twice: {args}")
        return Dimension(path, kind, tuple(args))
    if len(args) != (3 if kind == "quniform" else 2) or not all(_number(a) for a in args):
        raise SearchSpaceError(f"{where}: {kind} takes numbers {DISTRIBUTIONS[kind]}, got {args!r}")
    lo, hi = args[0], args[1]
    if not lo < hi:
        raise SearchSpaceError(f"{where}: {kind} lower bound {lo!r} must be below the upper bound {hi!r}")
    if kind == "loguniform" and lo <= 0:
        raise SearchSpaceError(f"{where}: loguniform needs a lower bound > 0, got {lo!r}")
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise SearchSpaceError(f"{where}: randint takes integers [lo, hi], got {args!r}")
    if kind == "quniform" and args[2] <= 0:
        raise SearchSpaceError(f"{where}: quniform step q must be > 0, got {args[2]!r}")
    return Dimension(path, kind, tuple(args))


@dataclass(frozen=True)
class SearchSpace:
    """What a search varies (dotted recipe paths) and how it judges a trial.

    Args:
        objective: ``constrained`` (max reduction within the budget, ASHA) or ``multi`` (Pareto front).
        reduction: ``macs``, ``params`` or ``speedup`` (searched on MACs, picked by measured latency).
        budget_pp: the accuracy budget, pp of validation accuracy below the dense model (None = the base
            recipe's ``max_accuracy_drop``). A searched ``max_accuracy_drop`` only steers the stages.
    """

    dimensions: tuple[Dimension, ...]
    objective: str = "constrained"
    reduction: str = "macs"
    budget_pp: float | None = None
    num_samples: int = 8
    description: str = ""
    source: str = "search space"

    def __post_init__(self):
        where = self.source
        if not self.dimensions:
            raise SearchSpaceError(f"{where}: 'space' must map at least one recipe field to a distribution")
        if self.objective not in OBJECTIVES:
            raise SearchSpaceError(f"{where}: objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        if self.reduction not in REDUCTIONS:
            raise SearchSpaceError(f"{where}: reduction must be one of {list(REDUCTIONS)}, got {self.reduction!r}")
        if self.budget_pp is not None and not (_number(self.budget_pp) and 0 <= self.budget_pp <= 100):
            raise SearchSpaceError(f"{where}: budget_pp must be in [0, 100] percentage points, got {self.budget_pp!r}")
        if not isinstance(self.num_samples, int) or isinstance(self.num_samples, bool) or self.num_samples < 1:
            raise SearchSpaceError(f"{where}: num_samples must be an integer >= 1, got {self.num_samples!r}")

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data, source: str = "search space") -> SearchSpace:
        if not isinstance(data, dict):
            raise SearchSpaceError(f"{source} must hold a mapping with a 'space' key, got {type(data).__name__}")
        unknown = sorted(set(data) - set(SPACE_KEYS))
        if unknown:
            raise SearchSpaceError(f"{source}: unknown key(s) {unknown}; valid: {list(SPACE_KEYS)} "
                                   "(recipe fields go under 'space')")
        space = data.get("space")
        if not isinstance(space, dict):
            raise SearchSpaceError(f"{source}: 'space' must map dotted recipe fields to distributions, got {space!r}")
        dims = tuple(_dimension(str(path), spec, source) for path, spec in space.items())
        settings = {k: data[k] for k in ("objective", "reduction", "budget_pp", "num_samples") if data.get(k) is not None}
        return cls(dims, description=str(data.get("description") or ""), source=source, **settings)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> SearchSpace:
        path = Path(path)
        if not path.is_file():
            raise SearchSpaceError(f"search space file {path} does not exist")
        return cls.from_text(path.read_text(), source=str(path))

    @classmethod
    def from_text(cls, text: str, source: str = "search space") -> SearchSpace:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SearchSpaceError(f"{source} is not valid YAML: {exc}") from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, spec: str) -> SearchSpace:
        """A file path, or the YAML / JSON text itself ("" = recipes/search/default.yaml)."""
        if not spec or not spec.strip():
            return cls.from_yaml(DEFAULT_SPACE)
        if "\n" in spec or spec.lstrip().startswith("{"):
            return cls.from_text(spec)
        return cls.from_yaml(spec)

    def with_settings(self, *, objective: str | None = None, reduction: str | None = None,
                      budget_pp: float | None = None, num_samples: int | None = None) -> SearchSpace:
        """The space with command-line settings on top (None keeps the file's)."""
        changes = {k: v for k, v in (("objective", objective), ("reduction", reduction), ("budget_pp", budget_pp),
                                     ("num_samples", num_samples)) if v is not None}
        return replace(self, **changes) if changes else self

    def to_dict(self) -> dict:
        return {"description": self.description, "objective": self.objective, "reduction": self.reduction,
                "budget_pp": self.budget_pp, "num_samples": self.num_samples,
                "space": {d.path: d.to_yaml() for d in self.dimensions}}

    # ---- against a recipe --------------------------------------------------------------------
    @property
    def paths(self) -> list[str]:
        return [d.path for d in self.dimensions]

    def validate(self, base: Recipe) -> None:
        """Every field exists and may be searched, every bound / choice is a valid value of it, and the base
        recipe's value lies in the space (it is the first trial)."""
        flat = base.flat()
        searchable = sorted(k for k in flat if k not in UNSEARCHABLE)
        for d in self.dimensions:
            where = f"{self.source}: {d.path}"
            if d.path in UNSEARCHABLE:
                raise SearchSpaceError(f"{where} cannot be searched: {UNSEARCHABLE[d.path]}")
            if d.path not in flat:
                raise SearchSpaceError(f"{where}: unknown recipe field; valid: {searchable}")
            for value in d.corners():
                try:
                    base.with_overrides({d.path: value})
                except ConfigError as exc:
                    raise SearchSpaceError(f"{where}: {d.kind} value {value!r} is not valid: {exc}") from None
            if d.kind in ("uniform", "loguniform", "quniform"):  # real-valued draws must suit the field
                lo, hi = d.args[0], d.args[1]
                inner = float(lo + (hi - lo) * 0.37) if d.kind != "quniform" else float(lo + d.args[2] * 0.5)
                try:
                    base.with_overrides({d.path: inner})
                except ConfigError as exc:
                    raise SearchSpaceError(f"{where}: {d.kind} draws real numbers such as {inner:g}, which is not "
                                           f"valid: {exc} (an integer field takes randint [lo, hi])") from None
            if not d.contains(flat[d.path]):
                raise SearchSpaceError(f"{where}: the base recipe's value {flat[d.path]!r} lies outside "
                                       f"{d.kind} {list(d.args)}; widen the range (the base recipe is the first trial)")
        if self.reduction == "speedup" and self.objective == "multi":
            raise SearchSpaceError(f"{self.source}: the multi-objective front is accuracy vs macs or params; "
                                   "speedup is measured after the search (use objective: constrained)")

    def budget(self, base: Recipe) -> float:
        return base.max_accuracy_drop if self.budget_pp is None else float(self.budget_pp)

    def default_point(self, base: Recipe) -> dict:
        flat = base.flat()
        return {p: flat[p] for p in self.paths}

    def recipe(self, base: Recipe, config: dict) -> Recipe:
        return base.with_overrides({p: config[p] for p in self.paths})

    def param_space(self) -> dict:
        return {d.path: d.domain() for d in self.dimensions}

    @property
    def metric(self) -> str:
        return "params_reduction" if self.reduction == "params" else "macs_reduction"
