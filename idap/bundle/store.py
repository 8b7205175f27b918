"""Portable, pickle-free model bundles: save a (pruned) model, load it anywhere, prove it is the same model.

A bundle is a directory of JSON and safetensors files (``idap.bundle.format`` describes them): the architecture
by registry name with the module attributes pruning changed, the weights, the recipe, and a parity probe.
Loading rebuilds the architecture from its registry name, reshapes it to the recorded widths, loads the
weights with safetensors (never pickle) and checks the probe output. Every problem raises ``BundleError``
naming the bundle path and what is wrong.

Example:
    >>> import tempfile, torch
    >>> from idap.models.registry import create_model
    >>> model = create_model("cnn_small", image_size=8)
    >>> path = save_bundle(model, tempfile.mkdtemp() + "/cnn", input_shape=(1, 8, 8))
    >>> same = load_bundle(path)  # rebuilt from JSON + safetensors, checked against the parity probe
    >>> x = torch.randn(4, 1, 8, 8)
    >>> torch.allclose(same(x), model.eval()(x), atol=1e-6)
    True
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from idap.atomic import staged_directory
from idap.bundle.changes import apply_changes, check_structure, describe_changes, reshape_to
from idap.bundle.format import (
    ARCHITECTURE,
    FORMAT,
    FORMAT_VERSION,
    METADATA,
    ONNX,
    PARITY,
    PARITY_ATOL,
    RECIPE,
    TOKENIZER_DIR,
    WEIGHTS,
    BundleError,
    check_finite,
    checked_input_shape,
    checked_input_spec,
    forward,
    probe_batch,
    read_architecture,
    read_json,
    read_tensors,
    read_tokenizer,
    require_file,
    write_json,
    write_tokenizer,
)
from idap.bundle.onnx_export import check_onnx, export_onnx
from idap.measure.metrics import count_macs, count_params, model_device
from idap.models.registry import ModelError, check_trusted, create_model

__all__ = ["load_bundle", "read_bundle_info", "save_bundle"]


def save_bundle(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    input_shape: Sequence[int],
    recipe: dict | None = None,
    metadata: dict | None = None,
    onnx: bool = False,
    input_spec: dict | None = None,
) -> Path:
    """Write ``model`` as a bundle, atomically: a good bundle already there is replaced only by a complete one.

    Args:
        model: built by ``idap.models.registry.create_model`` (it carries ``idap_arch``), then pruned in place.
        input_shape: one sample's shape ``(C, H, W)``; the parity probe and the MACs use it.
        recipe: the settings that produced the model (default ``{}``).
        metadata: optional JSON-able metrics / lineage, written to ``metadata.json``.
        onnx: also export ``model.onnx`` and check it against PyTorch with onnxruntime.
        input_spec: what the model expects of its input beyond the shape, recorded as architecture.json's
            ``input`` (``{"mean", "std", "scale"}``: ``x = (pixels * scale - mean) / std``); see
            ``read_input_spec``. Default: the ``idap_input`` a model loaded from a bundle carries.

    Returns:
        The bundle directory.
    """
    directory = Path(directory)
    input_shape = checked_input_shape(input_shape, directory)
    arch = getattr(model, "idap_arch", None)
    if not isinstance(arch, dict):
        raise BundleError(
            f"{directory}: the model has no idap_arch; build it with idap.models.registry.create_model so a bundle "
            "can name its architecture"
        )
    _check_replaceable(directory)
    # Parity reference, MACs and ONNX are computed on CPU: the loader verifies on CPU, and TF32 on a GPU
    # would differ from CPU by far more than the parity tolerance.
    cpu_model = model if model_device(model).type == "cpu" else copy.deepcopy(model).cpu()
    probe = probe_batch(input_shape, model=cpu_model)
    try:
        output = forward(cpu_model, probe)
    except Exception as error:
        raise BundleError(
            f"{directory}: the model fails on the parity probe {tuple(probe.shape)}: {error}"
        ) from error
    if not bool(torch.isfinite(output).all()):
        raise BundleError(f"{directory}: the model's output on the parity probe has NaN or Inf")
    weights = _state_dict_for_saving(model)
    check_finite(weights, directory)
    fresh = _fresh_model(arch, directory)
    architecture = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        **describe_changes(cpu_model, fresh, directory),
        "input_shape": list(input_shape),
        "num_classes": arch.get("num_classes"),
        "params": count_params(cpu_model),
        "macs": count_macs(cpu_model, input_shape),
    }
    # A model loaded from a bundle carries what its input must look like (``idap_input``), so a model pruned
    # from it records the same normalisation without every caller passing it on.
    input_spec = input_spec if input_spec is not None else getattr(model, "idap_input", None)
    if not input_spec and callable(getattr(model, "token_input", None)):
        input_spec = {"tokens": model.token_input()}
    if input_spec:
        architecture["input"] = checked_input_spec(input_spec, input_shape, directory)

    with staged_directory(directory) as staging:
        write_json(staging / ARCHITECTURE, architecture)
        write_json(staging / RECIPE, recipe or {})
        if metadata is not None:
            write_json(staging / METADATA, metadata)
        save_file(weights, str(staging / WEIGHTS), metadata={"format": FORMAT})
        save_file({"input": probe, "output": output}, str(staging / PARITY), metadata={"format": FORMAT})
        write_tokenizer(staging, getattr(model, "idap_tokenizer", None))
        if onnx:
            export_onnx(cpu_model, staging / ONNX, input_shape=input_shape)
            check_onnx(cpu_model, staging / ONNX, input_shape=input_shape)
    return directory


def load_bundle(
    directory: str | os.PathLike,
    *,
    verify: bool = True,
    map_location: str | torch.device = "cpu",
    trust_modules: Iterable[str] = (),
) -> nn.Module:
    """Rebuild a bundled model in eval mode, without pickle and without running code the bundle names.

    A bundle built from a registered architecture loads by name. One whose architecture is a user factory
    (``package.module:factory``) loads only when that module is trusted — ``trust_modules`` here,
    ``idap.models.registry.trust_modules`` or ``$IDAP_TRUSTED_MODULES`` — never because the bundle says so.

    Args:
        verify: run the parity probe and require ``max|diff| <= 1e-5 * max(1, max|reference|)``, i.e. an
            absolute 1e-5 for outputs of magnitude up to 1, relative beyond (float32 round-off grows with
            the logits' magnitude).
        map_location: device the returned model lives on (verification always runs on CPU first).
        trust_modules: modules whose model factories this call may import (the caller's decision).
    """
    directory = Path(directory)
    architecture = read_architecture(directory)
    try:
        check_trusted(architecture["arch"]["name"], trust_modules, where=f"{directory / ARCHITECTURE}: ")
    except ModelError as error:
        raise BundleError(str(error)) from None
    require_file(directory / WEIGHTS)
    require_file(directory / PARITY)
    read_json(directory / RECIPE)
    model = _fresh_model(architecture["arch"], directory)
    apply_changes(model, architecture, directory)
    weights = read_tensors(directory / WEIGHTS)
    check_finite(weights, directory / WEIGHTS)
    reshape_to(model, weights, directory / WEIGHTS)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise BundleError(f"{directory / WEIGHTS}: weights do not fit the architecture: {error}") from error
    check_structure(model, directory / WEIGHTS)
    model.eval()
    if architecture.get("input"):
        model.idap_input = dict(architecture["input"])
    if (directory / TOKENIZER_DIR).is_dir():
        model.idap_tokenizer = read_tokenizer(directory)
    if verify:
        _verify_parity(model, directory)
    return model.to(map_location)


def read_bundle_info(directory: str | os.PathLike) -> dict:
    """A bundle's description without loading weights.

    Returns:
        ``{"path", "architecture", "recipe", "metadata", "onnx"}``; ``metadata`` is ``{}`` when absent and
        ``onnx`` is the path of ``model.onnx`` or ``None``.
    """
    directory = Path(directory)
    architecture = read_architecture(directory)
    metadata_path = directory / METADATA
    onnx_path = directory / ONNX
    return {
        "path": str(directory),
        "architecture": architecture,
        "recipe": read_json(directory / RECIPE),
        "metadata": read_json(metadata_path) if metadata_path.exists() else {},
        "onnx": str(onnx_path) if onnx_path.exists() else None,
    }



# --- models and parity -------------------------------------------------------------------------------------


def _state_dict_for_saving(model: nn.Module) -> dict[str, Tensor]:
    # safetensors refuses tensors that share storage (tied weights, views); independent clones are fine
    # because load_state_dict copies into whatever the fresh model ties.
    return {key: t.detach().to("cpu", copy=True).contiguous() for key, t in model.state_dict().items()}


def _check_replaceable(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise BundleError(f"{directory}: exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not (directory / ARCHITECTURE).is_file():
        raise BundleError(f"{directory}: exists and is not a bundle; refusing to replace it")



def _fresh_model(arch: dict, directory: Path) -> nn.Module:
    # A fresh model is a shape template; building it must not advance the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        try:
            return create_model(**arch)
        except ModelError as error:
            raise BundleError(
                f"{directory}: cannot build architecture {arch.get('name')!r}: {error}"
            ) from error
        except (KeyError, TypeError) as error:
            raise BundleError(f"{directory}: incomplete or invalid arch {arch!r}: {error}") from error


def _verify_parity(model: nn.Module, directory: Path) -> None:
    path = directory / PARITY
    parity = read_tensors(path)
    if set(parity) != {"input", "output"}:
        raise BundleError(f"{path}: expected tensors 'input' and 'output', found {sorted(parity)}")
    try:
        output = forward(model, parity["input"])
    except Exception as error:
        raise BundleError(f"{directory}: the loaded model fails on the parity probe: {error}") from error
    reference = parity["output"]
    if output.shape != reference.shape:
        raise BundleError(
            f"{path}: parity mismatch: output shape {tuple(output.shape)} != saved {tuple(reference.shape)}"
        )
    diff = float((output.float() - reference.float()).abs().max())
    tolerance = PARITY_ATOL * max(1.0, float(reference.abs().max()))
    if not diff <= tolerance:
        raise BundleError(
            f"{path}: parity mismatch: loaded model's output differs from the saved output by "
            f"{diff:.3g} > {tolerance:.3g}"
        )
