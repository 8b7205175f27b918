"""The results of a search: the Pareto front, the winner, and the files a search leaves (also read back).

* :func:`pareto_front`: the completed trials no other trial dominates (validation accuracy vs reduction).
* :func:`select_winner`: the largest reduction within the budget, on validation (``speedup``: the fastest
  feasible front member, measured after the search); :func:`held_to_budget` its recipe for the steps after.
* :func:`write_results`: pareto.json / pareto.csv / pareto.png, best-recipe.yaml, the front's recipes,
  summary.json and search.md; :func:`read_results` turns such a directory back into a :class:`SearchResult`
  (a search run as a Ray job on a cluster hands its results back this way, through S3).

Example:
    >>> result = read_results(Path("results"), search_run_id="abc")     # doctest: +SKIP
    >>> result.winner_recipe.filter.p0                                  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from components.services.search_space import SearchSpace, SearchSpaceError
from idap.prune.config import Recipe

__all__ = ["SearchResult", "held_to_budget", "pareto_front", "read_results", "select_winner", "write_results"]

RESULT_FILES = {"json": "pareto.json", "csv": "pareto.csv", "best_recipe": "best-recipe.yaml", "front": "front",
                "plot": "pareto.png", "summary": "summary.json", "markdown": "search.md"}


@dataclass
class SearchResult:
    """The trials, the Pareto front, the winner (None: nothing feasible, the base recipe stands) and files."""

    search_run_id: str
    experiment_dir: Path
    space: SearchSpace
    budget_pp: float
    dense: dict
    trials: list[dict]
    front: list[dict]
    winner: dict | None
    winner_recipe: Recipe
    default: dict | None
    summary: dict
    base: Recipe
    files: dict[str, Path] = field(default_factory=dict)


def pareto_front(points: list[dict], keys: Sequence[str] = ("val_acc", "macs_reduction")) -> list[dict]:
    """The points no other point dominates (at least as good on every key, better on one); all maximized."""
    def dominates(a, b):
        return all(a[k] >= b[k] for k in keys) and any(a[k] > b[k] for k in keys)

    front = [p for p in points if not any(dominates(q, p) for q in points if q is not p)]
    return sorted(front, key=lambda p: [-p[k] for k in keys[1:]] + [-p[keys[0]]])



def select_winner(space: SearchSpace, front: list[dict], trials: list[dict]) -> dict | None:
    """The winner on validation: the largest reduction within the budget (speedup: the fastest feasible
    front member, measured after the search). None when no completed trial kept the budget."""
    feasible = [t for t in trials if t["status"] == "complete" and t["feasible"]]
    if not feasible:
        return None
    if space.reduction == "speedup":
        measured = [t for t in front if t["feasible"] and t.get("speedup_b1")] or feasible
        return max(measured, key=lambda t: (t.get("speedup_b1") or 0.0, t["val_acc"]))
    return max(feasible, key=lambda t: (t[space.metric], t["val_acc"], -t["index"]))



def held_to_budget(recipe: Recipe, budget_pp: float) -> Recipe:
    """The recipe with ``max_accuracy_drop`` = the search's budget, for the steps after the search (the report
    and the promotion rule hold the model to it). A searched Δ above the budget moves into ``stage_slack``,
    so the stages decide exactly as in the trial; a Δ below it stays (stricter, and changing it would
    change the stages' decisions)."""
    stage = recipe.stage_budget
    if recipe.max_accuracy_drop == budget_pp or stage < budget_pp:
        return recipe
    return recipe.replace(max_accuracy_drop=float(budget_pp), stage_slack=float(stage - budget_pp))


# ---- results -----------------------------------------------------------------------------------
CSV_FIELDS = ("trial_id", "status", "is_default", "on_front", "feasible", "val_acc", "drop_pp", "macs", "params",
              "macs_reduction", "params_reduction", "score", "test_acc", "latency_ms_b1", "speedup_b1", "reports",
              "compress_seconds", "error")


def write_results(result: SearchResult, directory: Path) -> dict[str, Path]:
    """pareto.json / pareto.csv (every trial, front flagged), pareto.png, best-recipe.yaml, front recipes,
    summary.json and search.md."""
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    doc = {"summary": result.summary, "dense": result.dense, "budget_pp": result.budget_pp,
           "space": result.space.to_dict(), "base_recipe": result.base.to_dict(),
           "front": [t["trial_id"] for t in result.front], "winner": result.winner and result.winner["trial_id"],
           "trials": result.trials}
    files["json"] = directory / "pareto.json"
    files["json"].write_text(json.dumps(doc, indent=2, default=str))
    files["csv"] = directory / "pareto.csv"
    with files["csv"].open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*CSV_FIELDS, *result.space.paths])
        for t in result.trials:
            writer.writerow([t.get(k) for k in CSV_FIELDS] + [t["config"].get(p) for p in result.space.paths])
    files["best_recipe"] = directory / "best-recipe.yaml"
    header = (f"# winner of the search: trial {result.winner['trial_id']}\n" if result.winner else
              "# no trial kept the accuracy budget: the base recipe stands\n")
    files["best_recipe"].write_text(header + result.winner_recipe.to_yaml())
    front_dir = directory / "front"
    shutil.rmtree(front_dir, ignore_errors=True)
    front_dir.mkdir()
    for t in result.front:
        (front_dir / f"{t['trial_id']}.yaml").write_text(result.space.recipe(result.base, t["config"]).to_yaml())
    files["front"] = front_dir
    with contextlib.suppress(Exception):  # a plot is not worth failing a search for
        files["plot"] = pareto_plot(result, directory / "pareto.png")
    files["summary"] = directory / "summary.json"
    files["summary"].write_text(json.dumps(result.summary, indent=2))
    files["markdown"] = directory / "search.md"
    files["markdown"].write_text(search_markdown(result))
    return files


def pareto_plot(result: SearchResult, path: Path) -> Path:
    """Validation accuracy vs MACs of every completed trial, the front joined, the default recipe marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in result.trials if t["status"] == "complete"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for feasible, colour, label in ((True, "tab:blue", "within budget"), (False, "tab:gray", "over budget")):
        pts = [(t["macs"] / 1e6, t["val_acc"]) for t in done if t["feasible"] is feasible]
        if pts:
            ax.scatter(*zip(*pts, strict=True), c=colour, s=28, label=label, zorder=2)
    front = sorted(result.front, key=lambda t: t["macs"])
    if front:
        ax.plot([t["macs"] / 1e6 for t in front], [t["val_acc"] for t in front], "-", c="tab:orange",
                label="Pareto front", zorder=1)
    if result.default and result.default["status"] == "complete":
        ax.scatter([result.default["macs"] / 1e6], [result.default["val_acc"]], marker="*", s=220, c="tab:red",
                   label="default recipe", zorder=3)
    if result.winner:
        ax.scatter([result.winner["macs"] / 1e6], [result.winner["val_acc"]], marker="o", s=160, facecolors="none",
                   edgecolors="k", label="winner", zorder=4)
    ax.scatter([result.dense["macs"] / 1e6], [result.dense["val_acc"]], marker="D", c="k", s=30, label="dense")
    ax.axhline(result.dense["val_acc"] - result.budget_pp, ls="--", c="tab:red", lw=0.8, label=f"budget {result.budget_pp:g} pp")
    ax.set_xlabel("MMACs")
    ax.set_ylabel("validation accuracy (%)")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Search ({result.space.objective}): {len(done)} completed trials")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(v, spec=".2f") -> str:
    return "" if v is None else format(v, spec) if isinstance(v, int | float) else str(v)


def search_markdown(result: SearchResult) -> str:
    s = result.summary
    lines = [f"# Compression search ({result.space.objective}, {result.space.reduction})", ""]
    if result.space.description:
        lines += [result.space.description.strip(), ""]
    lines += [f"Dense model: validation {result.dense['val_acc']:.2f} %, {result.dense['macs']:,} MACs, "
              f"{result.dense['params']:,} params. Budget: {result.budget_pp:g} pp of validation accuracy.",
              f"Trials: {s['trials']['complete']} complete, {s['trials']['stopped']} stopped early, "
              f"{s['trials']['failed']} failed. Wall time {s['seconds']['wall']:.0f} s, of which compression in the "
              f"trials {s['seconds']['trial_compress']:.0f} s (summed over trials), Ray start "
              f"{s['seconds']['ray_start']:.0f} s, MLflow logging {s['seconds']['mlflow_callback']:.1f} s.", ""]
    if result.winner:
        w = result.winner
        lines += [f"**Winner** (chosen on validation): trial `{w['trial_id']}` — {w['macs_reduction']:.2f}x fewer MACs, "
                  f"{w['params_reduction']:.2f}x fewer params, validation {w['val_acc']:.2f} % "
                  f"(drop {w['drop_pp']:.2f} pp), test {_fmt(w.get('test_acc'))} %.", ""]
    else:
        lines += ["**No trial kept the accuracy budget**: the base recipe stands.", ""]
    d = result.default
    if d and d["status"] == "complete":
        lines += [f"Default recipe (trial `{d['trial_id']}`): {d['macs_reduction']:.2f}x fewer MACs, validation "
                  f"{d['val_acc']:.2f} %, test {_fmt(d.get('test_acc'))} %.", ""]
    lines += ["| trial | status | front | val % | drop pp | MACs red. | params red. | test % | speed-up | "
              + " | ".join(f"`{p}`" for p in result.space.paths) + " |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|" + "---|" * len(result.space.paths)]
    for t in result.trials:
        mark = " (default)" if t["is_default"] else ""
        cells = [f"`{t['trial_id']}`{mark}", t["status"], "yes" if t.get("on_front") else "", _fmt(t["val_acc"]),
                 _fmt(t["drop_pp"]), _fmt(t["macs_reduction"]), _fmt(t["params_reduction"]), _fmt(t.get("test_acc")),
                 _fmt(t.get("speedup_b1")), *[_fmt(t["config"].get(p), ".4g") for p in result.space.paths]]
        lines.append("| " + " | ".join(cells) + " |")
    if "plot" in result.files or (result.experiment_dir / "results" / "pareto.png").is_file():
        lines += ["", "![Pareto front](pareto.png)"]
    return "\n".join(lines) + "\n"


def read_results(directory: str | Path, *, search_run_id: str, experiment_dir: str | Path | None = None) -> SearchResult:
    """The :class:`SearchResult` a :func:`write_results` directory holds (pareto.json, best-recipe.yaml).

    Raises:
        SearchSpaceError: a file is missing or is not what write_results writes (names the file).
    """
    directory = Path(directory)
    files = {k: directory / name for k, name in RESULT_FILES.items() if (directory / name).exists()}
    for key in ("json", "best_recipe", "markdown"):
        if key not in files:
            raise SearchSpaceError(f"{directory} holds no {RESULT_FILES[key]}: not the results of a finished search")
    try:
        doc = json.loads(files["json"].read_text())
        trials, space = doc["trials"], SearchSpace.from_dict(doc["space"], source=str(files["json"]))
        by_id = {t["trial_id"]: t for t in trials}
        front = [by_id[i] for i in doc["front"]]
        winner = by_id[doc["winner"]] if doc["winner"] else None
        base = Recipe.from_dict(doc["base_recipe"])
        result = SearchResult(search_run_id=search_run_id, experiment_dir=Path(experiment_dir or directory.parent),
                              space=space, budget_pp=float(doc["budget_pp"]), dense=doc["dense"], trials=trials,
                              front=front, winner=winner, winner_recipe=Recipe.from_yaml(files["best_recipe"]),
                              default=next((t for t in trials if t["is_default"]), None), summary=doc["summary"],
                              base=base, files=files)
    except (KeyError, TypeError, ValueError) as error:
        raise SearchSpaceError(f"{files['json']} is not a search's pareto.json ({type(error).__name__}: {error})") from None
    return result
