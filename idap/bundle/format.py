"""The bundle format: its files, their readers and writers, the parity probe, and ``BundleError``.

A bundle is a directory:

    architecture.json     base model id + constructor arguments (``model.idap_arch``), the module attributes
                          that differ from a fresh ``create_model`` instance (pruned widths, head counts),
                          the blocks replaced by ``nn.Identity``, input shape, params, MACs
    weights.safetensors   the state_dict
    recipe.json           the settings that produced the model
    parity.safetensors    a fixed seeded probe batch and the saved model's output on it
    metadata.json         optional: metrics, lineage
    model.onnx            optional: ONNX export (dynamic batch axis)
    tokenizer/            text models: the model's own tokenizer files (``model.idap_tokenizer``), data only

A text model (``idap.models.lm``, registered as ``bert_classifier`` / ``llama_lm``) is a bundle like any other: its
pruned head counts and FFN widths are the recorded module attributes, its removed layers the ``nn.Identity``
blocks, its input shape ``(tokens,)``, and architecture.json's ``input`` records ``{"tokens": {"vocab_size",
"pad_id"}}``; its parity probe is random token ids (int64), never padding.

Nothing here imports code or unpickles: JSON and safetensors only. ``idap.bundle.store`` saves and loads bundles
with these pieces, ``idap.bundle.changes`` records a pruned model's shape, ``idap.bundle.onnx_export`` exports.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from idap.measure.metrics import eval_mode

__all__ = ["BundleError", "check_finite", "checked_input_shape", "checked_input_spec", "forward", "probe_batch",
           "read_architecture", "read_input_spec", "read_json", "read_tensors", "read_tokenizer", "require_file", "write_json",
           "write_tokenizer"]

FORMAT = "idap-bundle"
FORMAT_VERSION = 1
ARCHITECTURE = "architecture.json"
WEIGHTS = "weights.safetensors"
RECIPE = "recipe.json"
PARITY = "parity.safetensors"
METADATA = "metadata.json"
ONNX = "model.onnx"
REQUIRED_FILES = (ARCHITECTURE, WEIGHTS, RECIPE, PARITY)
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")

PARITY_SEED = 0
PARITY_BATCH = 2
PARITY_ATOL = 1e-5


class BundleError(ValueError):
    """A bundle cannot be written, read or trusted; the message names the path and the problem."""



# --- files -------------------------------------------------------------------------------------------------


def read_architecture(directory: Path) -> dict:
    if not directory.is_dir():
        raise BundleError(f"{directory}: bundle directory does not exist")
    path = directory / ARCHITECTURE
    architecture = read_json(path)
    if not isinstance(architecture, dict) or architecture.get("format") != FORMAT:
        found = architecture.get("format") if isinstance(architecture, dict) else type(architecture).__name__
        raise BundleError(f"{path}: not an {FORMAT} architecture (format {found!r})")
    if architecture.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{path}: unsupported format_version {architecture.get('format_version')!r}; "
            f"this idap reads version {FORMAT_VERSION}"
        )
    for key, kind in (("arch", dict), ("modules", dict), ("removed", list), ("input_shape", list)):
        if not isinstance(architecture.get(key), kind):
            raise BundleError(
                f"{path}: field {key!r} must be a {kind.__name__}, got {architecture.get(key)!r}"
            )
    arch = architecture["arch"]
    if not isinstance(arch.get("name"), str) or not isinstance(arch.get("kwargs", {}), dict):
        raise BundleError(f"{path}: arch needs a model 'name' and a 'kwargs' object, got {arch!r}")
    return architecture


def require_file(path: Path) -> None:
    if not path.is_file():
        raise BundleError(f"{path}: missing bundle file (a bundle holds {', '.join(REQUIRED_FILES)})")


def read_json(path: Path) -> object:
    require_file(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{path}: invalid JSON: {error}") from error


def read_tensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # safetensors raises its own error type for truncated or corrupt files
        raise BundleError(f"{path}: corrupt or truncated safetensors file: {error}") from error


def write_json(path: Path, value: object) -> None:
    try:
        text = json.dumps(value, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise BundleError(f"{path.name} must be JSON-serialisable: {error}") from error
    path.write_text(text + "\n", encoding="utf-8")



def write_tokenizer(staging: Path, files: dict | None) -> None:
    if not files:
        return
    unknown = sorted(set(files) - set(TOKENIZER_FILES))
    if unknown:
        raise BundleError(f"tokenizer files {unknown} are not among the ones a bundle keeps: {list(TOKENIZER_FILES)}")
    (staging / TOKENIZER_DIR).mkdir()
    for name, text in files.items():
        (staging / TOKENIZER_DIR / name).write_text(text, encoding="utf-8")


def read_tokenizer(directory: Path) -> dict[str, str]:
    """The bundle's tokenizer files (only the known names; they are data, nothing in them runs)."""
    return {name: (directory / TOKENIZER_DIR / name).read_text(encoding="utf-8")
            for name in TOKENIZER_FILES if (directory / TOKENIZER_DIR / name).is_file()}



# --- probes and checks -------------------------------------------------------------------------------------


def probe_batch(input_shape: tuple[int, ...], batch: int = PARITY_BATCH, model: nn.Module | None = None) -> Tensor:
    """A seeded probe batch: random normals, or what the model says its input looks like (token ids)."""
    generator = torch.Generator().manual_seed(PARITY_SEED)
    if callable(getattr(model, "probe_input", None)):
        return model.probe_input(batch, tuple(input_shape), generator)
    return torch.randn((batch, *input_shape), generator=generator)


def forward(model: nn.Module, x: Tensor) -> Tensor:
    with eval_mode(model), torch.inference_mode():
        output = model(x)
    if not isinstance(output, Tensor):
        raise BundleError(f"a bundled model must return a Tensor, got {type(output).__name__}")
    return output.detach().cpu().contiguous()


def check_finite(tensors: dict[str, Tensor], path: Path) -> None:
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise BundleError(f"{path}: NaN or Inf in weights {bad[:5]}{' …' if len(bad) > 5 else ''}")


def checked_input_shape(input_shape: Sequence[int], where: Path) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError) as error:
        raise BundleError(f"{where}: input_shape must be a sequence of ints, got {input_shape!r}") from error
    if not shape or any(d < 1 for d in shape):
        raise BundleError(f"{where}: input_shape must be one sample's positive shape (C, H, W), got {shape}")
    return shape


def checked_input_spec(spec: dict, input_shape: tuple[int, ...], where: Path) -> dict:
    unknown = set(spec) - {"mean", "std", "scale", "tokens"}
    if unknown:
        raise BundleError(f"{where}: input_spec has unknown fields {sorted(unknown)}; valid: mean, std, scale, tokens")
    out: dict = {}
    if spec.get("tokens") is not None:
        tokens = spec["tokens"]
        if not isinstance(tokens, dict) or not isinstance(tokens.get("vocab_size"), int) or tokens["vocab_size"] < 2:
            raise BundleError(f"{where}: input_spec tokens must be {{'vocab_size': int >= 2, 'pad_id': int | None}}, "
                              f"got {tokens!r}")
        out["tokens"] = {"vocab_size": int(tokens["vocab_size"]), "pad_id": tokens.get("pad_id")}
    for key in ("mean", "std"):
        value = spec.get(key)
        if value is None:
            continue
        values = [float(v) for v in value]
        if len(values) != input_shape[0] or (key == "std" and min(values) <= 0):
            raise BundleError(f"{where}: input_spec {key} must have {input_shape[0]} values (one per channel)"
                              f"{', all > 0' if key == 'std' else ''}, got {value!r}")
        out[key] = values
    if spec.get("scale") is not None:
        out["scale"] = float(spec["scale"])
    return out


def read_input_spec(directory: str | os.PathLike) -> dict:
    """The input a bundled model expects: ``{"shape", "mean", "std", "scale", "tokens"}``.

    ``mean`` / ``std`` are per channel in the units of ``pixels * scale`` (``scale`` 1/255 for ImageNet-style
    statistics of pixels in [0, 1]); both are ``None`` when the bundle does not record them (models trained by
    ``idap train`` normalise with their dataset's own statistics, recorded with the dataset).
    ``tokens`` is ``{"vocab_size", "pad_id"}`` for a text model (int64 token ids of shape ``(N, tokens)``), else None.
    """
    architecture = read_architecture(Path(directory))
    spec = architecture.get("input") or {}
    return {"shape": list(architecture["input_shape"]), "mean": spec.get("mean"), "std": spec.get("std"),
            "scale": spec.get("scale"), "tokens": spec.get("tokens")}
