"""Portable, pickle-free model bundles: save a (pruned) model, load it anywhere, prove it is the same model.

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

A text model (``idap.lm``, registered as ``bert_classifier`` / ``llama_lm``) is a bundle like any other: its
pruned head counts and FFN widths are the recorded module attributes, its removed layers the ``nn.Identity``
blocks, its input shape ``(tokens,)``, and architecture.json's ``input`` records ``{"tokens": {"vocab_size",
"pad_id"}}``; its parity probe is random token ids (int64), never padding.

Loading rebuilds the architecture from its registry name, reshapes it to the recorded widths, loads the
weights with safetensors (never pickle) and checks the probe output. Every problem raises ``BundleError``
naming the bundle path and what is wrong.

Example:
    >>> import tempfile, torch
    >>> from idap.models import create_model
    >>> model = create_model("cnn_small", image_size=8)
    >>> path = save_bundle(model, tempfile.mkdtemp() + "/cnn", input_shape=(1, 8, 8))
    >>> same = load_bundle(path)  # rebuilt from JSON + safetensors, checked against the parity probe
    >>> x = torch.randn(4, 1, 8, 8)
    >>> torch.allclose(same(x), model.eval()(x), atol=1e-6)
    True
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from idap.atomic import staged_directory
from idap.metrics import count_macs, count_params, eval_mode, model_device
from idap.models import ModelError, check_trusted, create_model

__all__ = ["BundleError", "check_onnx", "export_onnx", "load_bundle", "read_bundle_info", "read_input_spec",
           "save_bundle"]

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
# Attribute values a bundle records: what pruning changes (widths, head counts, normalised shapes).
_SCALARS = (bool, int, float, str)
_SKIPPED_ATTRIBUTES = frozenset({"training"})


class BundleError(ValueError):
    """A bundle cannot be written, read or trusted; the message names the path and the problem."""


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
        model: built by ``idap.models.create_model`` (it carries ``idap_arch``), then pruned in place.
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
    input_shape = _input_shape(input_shape, directory)
    arch = getattr(model, "idap_arch", None)
    if not isinstance(arch, dict):
        raise BundleError(
            f"{directory}: the model has no idap_arch; build it with idap.models.create_model so a bundle "
            "can name its architecture"
        )
    _check_replaceable(directory)
    # Parity reference, MACs and ONNX are computed on CPU: the loader verifies on CPU, and TF32 on a GPU
    # would differ from CPU by far more than the parity tolerance.
    cpu_model = model if model_device(model).type == "cpu" else copy.deepcopy(model).cpu()
    probe = _probe(input_shape, model=cpu_model)
    try:
        output = _forward(cpu_model, probe)
    except Exception as error:
        raise BundleError(
            f"{directory}: the model fails on the parity probe {tuple(probe.shape)}: {error}"
        ) from error
    if not bool(torch.isfinite(output).all()):
        raise BundleError(f"{directory}: the model's output on the parity probe has NaN or Inf")
    weights = _state_dict_for_saving(model)
    _check_finite(weights, directory)
    fresh = _fresh_model(arch, directory)
    architecture = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch,
        **_describe_changes(cpu_model, fresh, directory),
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
        architecture["input"] = _checked_input_spec(input_spec, input_shape, directory)

    with staged_directory(directory) as staging:
        _write_json(staging / ARCHITECTURE, architecture)
        _write_json(staging / RECIPE, recipe or {})
        if metadata is not None:
            _write_json(staging / METADATA, metadata)
        save_file(weights, str(staging / WEIGHTS), metadata={"format": FORMAT})
        save_file({"input": probe, "output": output}, str(staging / PARITY), metadata={"format": FORMAT})
        _write_tokenizer(staging, getattr(model, "idap_tokenizer", None))
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
    ``idap.models.trust_modules`` or ``$IDAP_TRUSTED_MODULES`` — never because the bundle says so.

    Args:
        verify: run the parity probe and require ``max|diff| <= 1e-5 * max(1, max|reference|)``, i.e. an
            absolute 1e-5 for outputs of magnitude up to 1, relative beyond (float32 round-off grows with
            the logits' magnitude).
        map_location: device the returned model lives on (verification always runs on CPU first).
        trust_modules: modules whose model factories this call may import (the caller's decision).
    """
    directory = Path(directory)
    architecture = _read_architecture(directory)
    try:
        check_trusted(architecture["arch"]["name"], trust_modules, where=f"{directory / ARCHITECTURE}: ")
    except ModelError as error:
        raise BundleError(str(error)) from None
    _require(directory / WEIGHTS)
    _require(directory / PARITY)
    _read_json(directory / RECIPE)
    model = _fresh_model(architecture["arch"], directory)
    _apply_changes(model, architecture, directory)
    weights = _read_tensors(directory / WEIGHTS)
    _check_finite(weights, directory / WEIGHTS)
    _reshape_to(model, weights, directory / WEIGHTS)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise BundleError(f"{directory / WEIGHTS}: weights do not fit the architecture: {error}") from error
    _check_structure(model, directory / WEIGHTS)
    model.eval()
    if architecture.get("input"):
        model.idap_input = dict(architecture["input"])
    if (directory / TOKENIZER_DIR).is_dir():
        model.idap_tokenizer = _read_tokenizer(directory)
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
    architecture = _read_architecture(directory)
    metadata_path = directory / METADATA
    onnx_path = directory / ONNX
    return {
        "path": str(directory),
        "architecture": architecture,
        "recipe": _read_json(directory / RECIPE),
        "metadata": _read_json(metadata_path) if metadata_path.exists() else {},
        "onnx": str(onnx_path) if onnx_path.exists() else None,
    }


def export_onnx(
    model: nn.Module, path: str | os.PathLike, *, input_shape: Sequence[int], opset: int = 17
) -> Path:
    """Export to ONNX with a dynamic batch axis (input ``input``, output ``logits``) and run onnx.checker.

    Uses the TorchScript-based exporter (``dynamo=False``): the dynamo exporter needs ``onnxscript``, which
    this project does not depend on. The model's training flag is restored afterwards.
    """
    import onnx

    path = Path(path)
    input_shape = _input_shape(input_shape, path)
    probe = _probe(input_shape, model=model).to(model_device(model))
    try:
        with eval_mode(model), torch.no_grad(), warnings.catch_warnings():
            # The legacy exporter warns that it is legacy, and traces shape arithmetic with TracerWarnings;
            # check_onnx is what proves the export right.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (probe,),
                str(path),
                dynamo=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=opset,
            )
        onnx.checker.check_model(str(path))
    except Exception as error:
        raise BundleError(f"{path}: ONNX export failed: {error}") from error
    return path


def check_onnx(
    model: nn.Module, onnx_path: str | os.PathLike, *, input_shape: Sequence[int], atol: float = 1e-4
) -> float:
    """Run the ONNX file with onnxruntime (CPU) on a probe batch; return max |ONNX − PyTorch|.

    The probe has a different batch size from the export's, so the dynamic batch axis is exercised.

    Raises:
        BundleError: when the difference exceeds ``atol`` or onnxruntime cannot run the file.
    """
    import onnxruntime

    onnx_path = Path(onnx_path)
    probe = _probe(_input_shape(input_shape, onnx_path), batch=PARITY_BATCH + 1, model=model)
    expected = _forward(model, probe.to(model_device(model))).cpu()
    try:
        session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        (got,) = session.run(None, {name: probe.numpy()})[:1]
    except Exception as error:
        raise BundleError(f"{onnx_path}: onnxruntime cannot run the model: {error}") from error
    got = torch.from_numpy(got)
    if got.shape != expected.shape:
        raise BundleError(
            f"{onnx_path}: ONNX output shape {tuple(got.shape)} differs from PyTorch {tuple(expected.shape)}"
        )
    diff = float((got - expected).abs().max())
    if not diff <= atol:
        raise BundleError(f"{onnx_path}: ONNX output differs from PyTorch by {diff:.3g} > atol {atol:g}")
    return diff


# --- describing a pruned model against a fresh one -------------------------------------------------------


def _describe_changes(model: nn.Module, fresh: nn.Module, directory: Path) -> dict:
    """The module attributes that differ from a fresh instance, and the blocks replaced by nn.Identity."""
    fresh_modules = dict(fresh.named_modules())
    modules: dict[str, dict] = {}
    removed: list[str] = []
    seen = set()
    for name, module in model.named_modules():
        seen.add(name)
        original = fresh_modules.get(name)
        if original is None:
            raise BundleError(
                f"{directory}: module {name!r} ({type(module).__name__}) does not exist in a fresh "
                f"{model.idap_arch['name']!r}; a bundle records only reshaped modules and nn.Identity "
                "replacements"
            )
        if isinstance(module, nn.Identity) and not isinstance(original, nn.Identity):
            removed.append(name)
            continue
        if type(module) is not type(original):
            raise BundleError(
                f"{directory}: module {name!r} is {type(module).__name__} but the architecture builds "
                f"{type(original).__name__}; a bundle records only reshaped modules and nn.Identity "
                "replacements"
            )
        changed = _changed_attributes(module, original, f"{directory}: module {name!r}")
        if changed:
            modules[name] = changed
    missing = [
        name
        for name in fresh_modules
        if name not in seen and not any(name.startswith(f"{r}.") for r in removed)
    ]
    if missing:
        raise BundleError(
            f"{directory}: modules {missing[:5]} of a fresh {model.idap_arch['name']!r} are missing from "
            "the model; only replacement by nn.Identity can be recorded"
        )
    return {"modules": modules, "removed": removed}


def _changed_attributes(module: nn.Module, original: nn.Module, where: str) -> dict:
    changed = {}
    for attr, value in vars(module).items():
        if attr.startswith("_") or attr in _SKIPPED_ATTRIBUTES or not _recordable(value):
            continue
        if hasattr(original, attr) and _same(value, getattr(original, attr)):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise BundleError(f"{where}: attribute {attr}={value} cannot be written to JSON")
        changed[attr] = list(value) if isinstance(value, tuple | list) else value
    return changed


def _recordable(value: object) -> bool:
    if isinstance(value, _SCALARS):
        return True
    return isinstance(value, tuple | list) and all(isinstance(v, bool | int | float) for v in value)


def _same(a: object, b: object) -> bool:
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return list(a) == list(b)
    return type(a) is type(b) and a == b


def _apply_changes(model: nn.Module, architecture: dict, directory: Path) -> None:
    where = directory / ARCHITECTURE
    for name in architecture["removed"]:
        parent_name, _, child = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name)
            model.get_submodule(name)
        except AttributeError as error:
            raise BundleError(
                f"{where}: removed module {name!r} does not exist in the architecture"
            ) from error
        setattr(parent, child, nn.Identity())
    for name, attributes in architecture["modules"].items():
        try:
            module = model.get_submodule(name)
        except AttributeError as error:
            raise BundleError(f"{where}: module {name!r} does not exist in the architecture") from error
        if not isinstance(attributes, dict):
            raise BundleError(f"{where}: modules[{name!r}] must be an object, got {attributes!r}")
        for attr, value in attributes.items():
            if attr.startswith("_") or not _recordable(value):
                raise BundleError(f"{where}: modules[{name!r}].{attr} = {value!r} is not a recordable value")
            current = getattr(module, attr, None)
            if isinstance(current, tuple) and isinstance(value, list):
                value = tuple(value)
            setattr(module, attr, value)


def _reshape_to(model: nn.Module, weights: dict[str, Tensor], path: Path) -> None:
    """Give every parameter/buffer the saved shape and dtype, so load_state_dict can copy into it."""
    replaced: dict[int, Tensor] = {}  # tied tensors stay tied
    for key, saved in weights.items():
        module_name, _, attr = key.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            continue  # reported as an unexpected key by load_state_dict(strict=True)
        slots = module._parameters if attr in module._parameters else module._buffers
        current = slots.get(attr)
        if current is None or (current.shape == saved.shape and current.dtype == saved.dtype):
            continue
        if id(current) not in replaced:
            empty = torch.empty(saved.shape, dtype=saved.dtype, device=current.device)
            if isinstance(current, nn.Parameter):
                empty = nn.Parameter(empty, requires_grad=current.requires_grad)
            replaced[id(current)] = empty
        slots[attr] = replaced[id(current)]


def _check_structure(model: nn.Module, path: Path) -> None:
    """Weight shapes must agree with the modules' recorded widths (a reshaped tensor is not a pruned layer)."""
    for name, module in model.named_modules():
        problem = _structure_problem(module)
        if problem:
            raise BundleError(
                f"{path}: weights of {name or 'the model'!r} ({type(module).__name__}) {problem}"
            )


def _structure_problem(module: nn.Module) -> str | None:
    def shape(tensor: Tensor | None) -> tuple[int, ...] | None:
        return None if tensor is None else tuple(tensor.shape)

    if isinstance(module, nn.modules.conv._ConvNd):
        w = shape(module.weight)
        if module.transposed:
            expected = (module.in_channels, module.out_channels // module.groups, *module.kernel_size)
        else:
            expected = (module.out_channels, module.in_channels // module.groups, *module.kernel_size)
        if w != expected:
            return f"have shape {w}, but in/out channels, groups and kernel size need {expected}"
        if module.bias is not None and shape(module.bias) != (module.out_channels,):
            return f"have bias shape {shape(module.bias)}, need ({module.out_channels},)"
    elif isinstance(module, nn.Linear):
        if shape(module.weight) != (module.out_features, module.in_features):
            return (
                f"have shape {shape(module.weight)}, but in/out features need "
                f"{(module.out_features, module.in_features)}"
            )
        if module.bias is not None and shape(module.bias) != (module.out_features,):
            return f"have bias shape {shape(module.bias)}, need ({module.out_features},)"
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        n = (module.num_features,)
        for tensor_name in ("weight", "bias", "running_mean", "running_var"):
            tensor = getattr(module, tensor_name, None)
            if tensor is not None and shape(tensor) != n:
                return f"have {tensor_name} shape {shape(tensor)}, but num_features needs {n}"
    elif isinstance(module, nn.LayerNorm | nn.GroupNorm):
        n = tuple(module.normalized_shape) if isinstance(module, nn.LayerNorm) else (module.num_channels,)
        for tensor_name in ("weight", "bias"):
            tensor = getattr(module, tensor_name, None)
            if tensor is not None and shape(tensor) != n:
                return f"have {tensor_name} shape {shape(tensor)}, but the normalised shape needs {n}"
    return None


# --- files -------------------------------------------------------------------------------------------------


def _read_architecture(directory: Path) -> dict:
    if not directory.is_dir():
        raise BundleError(f"{directory}: bundle directory does not exist")
    path = directory / ARCHITECTURE
    architecture = _read_json(path)
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


def _require(path: Path) -> None:
    if not path.is_file():
        raise BundleError(f"{path}: missing bundle file (a bundle holds {', '.join(REQUIRED_FILES)})")


def _read_json(path: Path) -> object:
    _require(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{path}: invalid JSON: {error}") from error


def _read_tensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except Exception as error:  # safetensors raises its own error type for truncated or corrupt files
        raise BundleError(f"{path}: corrupt or truncated safetensors file: {error}") from error


def _write_json(path: Path, value: object) -> None:
    try:
        text = json.dumps(value, indent=2, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise BundleError(f"{path.name} must be JSON-serialisable: {error}") from error
    path.write_text(text + "\n", encoding="utf-8")


def _state_dict_for_saving(model: nn.Module) -> dict[str, Tensor]:
    # safetensors refuses tensors that share storage (tied weights, views); independent clones are fine
    # because load_state_dict copies into whatever the fresh model ties.
    return {key: t.detach().to("cpu", copy=True).contiguous() for key, t in model.state_dict().items()}


def _check_replaceable(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise BundleError(f"{directory}: exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not (directory / ARCHITECTURE).is_file():
        raise BundleError(f"{directory}: exists and is not a bundle; refusing to replace it")


# --- models, probes, parity ----------------------------------------------------------------------------


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
    parity = _read_tensors(path)
    if set(parity) != {"input", "output"}:
        raise BundleError(f"{path}: expected tensors 'input' and 'output', found {sorted(parity)}")
    try:
        output = _forward(model, parity["input"])
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


def _probe(input_shape: tuple[int, ...], batch: int = PARITY_BATCH, model: nn.Module | None = None) -> Tensor:
    """A seeded probe batch: random normals, or what the model says its input looks like (token ids)."""
    generator = torch.Generator().manual_seed(PARITY_SEED)
    if callable(getattr(model, "probe_input", None)):
        return model.probe_input(batch, tuple(input_shape), generator)
    return torch.randn((batch, *input_shape), generator=generator)


def _write_tokenizer(staging: Path, files: dict | None) -> None:
    if not files:
        return
    unknown = sorted(set(files) - set(TOKENIZER_FILES))
    if unknown:
        raise BundleError(f"tokenizer files {unknown} are not among the ones a bundle keeps: {list(TOKENIZER_FILES)}")
    (staging / TOKENIZER_DIR).mkdir()
    for name, text in files.items():
        (staging / TOKENIZER_DIR / name).write_text(text, encoding="utf-8")


def _read_tokenizer(directory: Path) -> dict[str, str]:
    """The bundle's tokenizer files (only the known names; they are data, nothing in them runs)."""
    return {name: (directory / TOKENIZER_DIR / name).read_text(encoding="utf-8")
            for name in TOKENIZER_FILES if (directory / TOKENIZER_DIR / name).is_file()}


def _forward(model: nn.Module, x: Tensor) -> Tensor:
    with eval_mode(model), torch.inference_mode():
        output = model(x)
    if not isinstance(output, Tensor):
        raise BundleError(f"a bundled model must return a Tensor, got {type(output).__name__}")
    return output.detach().cpu().contiguous()


def _check_finite(tensors: dict[str, Tensor], path: Path) -> None:
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise BundleError(f"{path}: NaN or Inf in weights {bad[:5]}{' …' if len(bad) > 5 else ''}")


def _input_shape(input_shape: Sequence[int], where: Path) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError) as error:
        raise BundleError(f"{where}: input_shape must be a sequence of ints, got {input_shape!r}") from error
    if not shape or any(d < 1 for d in shape):
        raise BundleError(f"{where}: input_shape must be one sample's positive shape (C, H, W), got {shape}")
    return shape


# --- what the model expects of its input --------------------------------------------------------------------


def read_input_spec(directory: str | os.PathLike) -> dict:
    """The input a bundled model expects: ``{"shape", "mean", "std", "scale", "tokens"}``.

    ``mean`` / ``std`` are per channel in the units of ``pixels * scale`` (``scale`` 1/255 for ImageNet-style
    statistics of pixels in [0, 1]); both are ``None`` when the bundle does not record them (models trained by
    ``idap train`` normalise with their dataset's own statistics, recorded with the dataset).
    ``tokens`` is ``{"vocab_size", "pad_id"}`` for a text model (int64 token ids of shape ``(N, tokens)``), else None.
    """
    architecture = _read_architecture(Path(directory))
    spec = architecture.get("input") or {}
    return {"shape": list(architecture["input_shape"]), "mean": spec.get("mean"), "std": spec.get("std"),
            "scale": spec.get("scale"), "tokens": spec.get("tokens")}


def _checked_input_spec(spec: dict, input_shape: tuple[int, ...], where: Path) -> dict:
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
