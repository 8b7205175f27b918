"""From the runs of a comparison to what people read: the results JSON (with rows, goals, ablations), the
Markdown page and the plot. The analysis lives in ``benchmarks.analysis``, the page and the plot in
``benchmarks.pages``; this module writes them and re-renders a results JSON:

    python -m benchmarks.summarize benchmarks/results/<stem>.json
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.analysis import (
    ablations,
    aggregate,
    budget_check,
    budget_goals,
    goals,
    losses,
    pareto,
    timing_warnings,
)
from benchmarks.pages import plot_accuracy_vs_macs, render_markdown
from idap.atomic import write_text

__all__ = ["main", "write_results"]


def write_results(payload: dict, out: Path, stem: str, *, plot: bool = True) -> dict[str, Path]:
    """``<out>/<stem>.json``, ``.md`` and (with ``plot``) ``.png``; rows, goals and ablations are in the JSON too."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    rows = aggregate(payload["runs"])
    image = None
    if plot and rows:
        paths["plot"] = plot_accuracy_vs_macs(payload, out / f"{stem}.png")
        image = paths["plot"].name
    full = {**payload, "rows": rows, "ablations": ablations(rows)}
    if payload["status"] == "complete":
        full["goals"] = goals(rows, payload["dense"], payload["preset"]["goal_target"])
        full["budget_goals"] = budget_goals(rows, payload["dense"], payload["preset"].get("budget_pp"))
        full["losses"] = losses(rows)
        full["pareto"] = pareto(rows)
        full["timing_warnings"] = timing_warnings(rows)
    full["budget_violations"] = budget_check(payload["runs"], payload["preset"]["total_budget"])
    write_text(paths["json"], json.dumps(full, indent=2, default=str))
    write_text(paths["markdown"], render_markdown(payload, image))
    return paths


def main(argv: list[str] | None = None) -> int:
    """Re-render the Markdown and the plot of a results JSON (after a change here; nothing is re-measured)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks.summarize", description=main.__doc__)
    p.add_argument("results", nargs="+", type=Path, help="benchmarks/results/<stem>.json")
    args = p.parse_args(argv)
    for path in args.results:
        payload = json.loads(path.read_text())
        payload = {k: v for k, v in payload.items() if k not in ("rows", "ablations", "goals", "losses", "pareto",
                                                                  "timing_warnings", "budget_violations")}
        written = write_results(payload, path.parent, payload["stem"], plot=payload["status"] == "complete")
        print(" ".join(str(v) for v in written.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
