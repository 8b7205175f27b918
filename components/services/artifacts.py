"""What the pipeline steps share: the image they run in, the effective recipe, and how a step's files
(bundles, splits, profile, trajectory, report) are written to and read back from artifact paths.

Models travel as idap bundles and data as ``save_splits`` directories (no pickles); the profile, the
trajectory and the report travel as JSON. Everything read back is exactly what was written, so the
stages run as separate steps give the model ``idap compress`` gives in one process.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from torch import nn

from components.services.settings import load_settings
from idap.bundle import read_bundle_info, save_bundle
from idap.cli import print_step
from idap.data import DataSplits, sample_shape
from idap.data import input_spec as data_input_spec
from idap.prune.config import ConfigError, Recipe
from idap.prune.state import RunState, StepRecord
from idap.report.files import write_plots

# Pipeline parameters below zero mean "keep the recipe's value" (a pipeline cannot express "unset").
KEEP = -1


def component_image() -> str:
    """The image every step runs in, fixed when the pipeline is compiled: $IDAP_IMAGE or the release image."""
    return load_settings().image


# ---- recipe ------------------------------------------------------------------------------------
def recipe_from_json(text: str) -> Recipe:
    """Parse the ``recipe_json`` parameter ("" = the default recipe)."""
    if not text or not text.strip():
        return Recipe()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"recipe_json is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe_json must hold a JSON object, got {type(data).__name__}")
    return Recipe.from_dict(data)


def effective_recipe(recipe_json: str = "", *, seed: int = KEEP, max_accuracy_drop: float = KEEP,
                     target_macs_reduction: float = KEEP, target_params_reduction: float = KEEP,
                     time_budget: str = "") -> Recipe:
    """``recipe_json`` with the pipeline's explicit parameters on top.

    A negative value keeps the recipe's field; a target of 0 means no target; anything else replaces it.
    ``time_budget`` ("20m", "1h"; "" keeps the recipe's) is the compression's ``recovery.time_budget``.
    """
    changes: dict = {}
    if seed >= 0:
        changes["seed"] = int(seed)
    if max_accuracy_drop >= 0:
        changes["max_accuracy_drop"] = float(max_accuracy_drop)
    for name, value in (("target_macs_reduction", target_macs_reduction),
                        ("target_params_reduction", target_params_reduction)):
        if value >= 0:
            changes[name] = float(value) if value > 0 else None
    if time_budget:
        changes["recovery.time_budget"] = time_budget
    recipe = recipe_from_json(recipe_json)
    return recipe.with_overrides(changes) if changes else recipe


def recipe_param(recipe: Recipe) -> str:
    """The recipe as the JSON string parameter the steps pass on."""
    return json.dumps(recipe.to_dict(), sort_keys=True)


# ---- files -------------------------------------------------------------------------------------
def write_json(path: str | os.PathLike, value) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2))
    return path


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


def input_shape(data: DataSplits) -> tuple[int, ...]:
    return sample_shape(data)


def check_fits(model: nn.Module, data: DataSplits, source: str) -> None:
    """A given base model must take the dataset's channels and predict its classes."""
    arch = getattr(model, "idap_arch", {})
    if arch.get("num_classes") not in (None, data.num_classes) or arch.get("in_channels") not in (None, data.in_channels):
        raise ValueError(f"base model {source} expects {arch.get('in_channels')} channels / {arch.get('num_classes')} "
                         f"classes, dataset {data.name} has {data.in_channels} / {data.num_classes}")


def save_model(model: nn.Module, artifact, data: DataSplits, *, recipe: dict, metadata: dict | None = None) -> Path:
    """Write ``model`` as a bundle at the artifact's path and describe it in the artifact's metadata."""
    path = save_bundle(model.cpu(), artifact.path, input_shape=input_shape(data), recipe=recipe, metadata=metadata,
                       input_spec=data_input_spec(data))
    arch = read_bundle_info(path)["architecture"]
    artifact.metadata.update({"format": "idap-bundle", "params": arch["params"], "macs": arch["macs"]})
    return path


# ---- divergence profile ------------------------------------------------------------------------
def profile_json(doc: dict) -> dict:
    """The profile exactly as ``FlowProfile.to_json`` gave it, without the dense figures stored beside it."""
    return {k: v for k, v in doc.items() if k != "dense"}


def profile_markdown(doc: dict, directory: str | os.PathLike) -> str:
    """Per-layer table of the flow scores and the profile plot, embedded so the Kubeflow UI shows it."""
    dense = doc.get("dense", {})
    lines = ["# Divergence profile of the dense model", ""]
    if dense:
        lines += [f"Dense model: validation accuracy {dense['val_acc']:.2f}%, {dense['params']:,} params, "
                  f"{dense['macs']:,} MACs; {doc.get('samples', 0)} calibration samples.", ""]
    lines += ["| layer | channels | mean score | min | max |", "|---|---:|---:|---:|---:|"]
    lines += [f"| `{layer['name']}` | {layer['channels']} | {layer['mean']:.3e} | {layer['min']:.3e} | {layer['max']:.3e} |"
              for layer in doc["layers"]]
    if doc.get("blocks"):
        lines += ["", f"| block | score ({doc.get('block_metric', 'divergence')}) |", "|---|---:|"]
        lines += [f"| `{name}` | {score:.4f} |" for name, score in doc["blocks"].items()]
    plots = write_plots({"trajectory": [], "divergence_profile": profile_json(doc)}, Path(directory))
    if "profile" in plots:
        lines += ["", f"![divergence profile]({plots['profile'].name})"]
    return embed_images("\n".join(lines) + "\n", directory)


# ---- trajectory --------------------------------------------------------------------------------
def save_state(path: str | os.PathLike, state: RunState) -> Path:
    """The run state a step hands the next one (its trajectory is what the report and MLflow show)."""
    return write_json(path, state.to_json())


def load_state(path: str | os.PathLike) -> RunState:
    return RunState.from_json(read_json(path))


def load_trajectory(path: str | os.PathLike) -> list[StepRecord]:
    """The trajectory of a run-state artifact (or of a plain list of step records)."""
    doc = read_json(path)
    return RunState.from_json(doc).trajectory if isinstance(doc, dict) else [StepRecord(**s) for s in doc]


def plan_reporter(tracker) -> Callable:
    """The run's time plan: a line in the step's log and params / a metric / a tag in its MLflow run."""
    def on_plan(plan) -> None:
        print(plan.line(), flush=True)
        tracker.log_plan(plan)

    return on_plan


def reporter(tracker) -> Callable[[StepRecord], None]:
    """Every trajectory step: a progress line in the step's log and a metric in its MLflow run."""
    def on_step(rec: StepRecord) -> None:
        print_step(rec)
        tracker.on_step(rec)

    return on_step


# ---- report ------------------------------------------------------------------------------------
_IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")


def embed_images(markdown: str, directory: str | os.PathLike) -> str:
    """Inline the PNGs a markdown file links to as base64 data URIs (a KFP Markdown artifact is one file)."""
    directory = Path(directory)

    def inline(match: re.Match) -> str:
        png = directory / match.group(2)
        if not png.is_file():
            return match.group(0)
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    return _IMAGE_LINK.sub(inline, markdown)


def default_registered_name(model_name: str, dataset: str) -> str:
    """``idap-<model>-<dataset>``, reduced to the characters a registry name may hold."""
    base = Path(dataset.rstrip("/")).name or dataset
    return re.sub(r"[^A-Za-z0-9_-]+", "-", f"idap-{model_name}-{Path(base).stem}").strip("-")
