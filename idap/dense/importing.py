"""Bring your own model: turn trained weights (or another bundle) into a bundle every later step takes.

Sources:

* an architecture and a weights file: a registered name (``idap.models.registry.list_models()``), any torchvision
  classification model by name (``torchvision.models.resnet50``) or a user factory
  ``package.module:factory`` (called as ``factory(num_classes=, in_channels=, image_size=, **options)``);
  weights as safetensors, or a PyTorch *state dict* read with ``torch.load(..., weights_only=True)``. A
  pickled full model is refused before any of its code can run, with the two lines that save a state dict.
* a bundle directory (for example one downloaded from the MLflow registry or S3 by the edge,
  ``pipelines.cli``): loaded with its parity check and written again.
* a Hugging Face text model directory (``config.json`` + ``model.safetensors`` + ``tokenizer.json``): BERT
  with a new classification head for ``--num-classes``, Llama as a decoder LM, fed ``--max-length`` tokens
  (``idap.dense.text_models.import_hf_model``); the bundle keeps the tokenizer.

Keys are matched strictly: a file that does not fit names every missing, unexpected and mis-shaped key.
``num_classes`` replaces the classifier (the last ``nn.Linear``) by a freshly initialised one; everything
else keeps the source's weights. The bundle records the input shape and the normalisation the model
expects (``idap.bundle.read_input_spec``; ImageNet statistics unless told otherwise), and at import the
bundle, loaded back from disk, must reproduce the source model's outputs (its logits, or the classifier's
input when the head was replaced) — ``ImportReport.parity_max_abs_diff`` is 0.0 on CPU.

A user factory runs because the user named it (``--model pkg.mod:f`` trusts ``pkg.mod`` for this call);
the bundle names it, so every later load needs the same trust (``--trust-module pkg.mod``).

Example:
    >>> import tempfile, torch, torchvision                                             # doctest: +SKIP
    >>> net = torchvision.models.resnet18(num_classes=10)                              # doctest: +SKIP
    >>> torch.save(net.state_dict(), "r18.pt")                                         # doctest: +SKIP
    >>> report = import_model("torchvision.models.resnet18", "r18.pt", "out/r18", image_size=32)  # doctest: +SKIP
    >>> report.parity_max_abs_diff                                                      # doctest: +SKIP
    0.0
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from idap.bundle.store import load_bundle, read_bundle_info, save_bundle
from idap.dense.weights import LISTED_KEYS, ModelImportError, load_strict, read_state_dict
from idap.measure.metrics import count_macs, count_params
from idap.models.prunable import classifier
from idap.models.registry import create_model

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImportReport", "ModelImportError", "fine_tune_bundle", "import_bundle",
           "import_model", "is_hf_directory", "read_state_dict"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # of RGB pixels scaled to [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)
PARITY_SEED = 1234
PARITY_BATCH = 4
# Same weights, same ops, same machine: the outputs agree to the bit; the tolerance only absorbs
# kernel selection differing between two model instances.
PARITY_RTOL = 1e-6


@dataclass
class ImportReport:
    """What ``import_model`` / ``import_bundle`` wrote and checked."""

    path: str
    architecture: str
    source: str
    source_num_classes: int
    num_classes: int
    head_replaced: bool
    input_shape: list[int]
    mean: list[float] | None
    std: list[float] | None
    scale: float | None
    params: int
    macs: int
    parity_max_abs_diff: float
    parity_compared: str  # "logits" or "features" (the classifier's input, when the head was replaced)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


# --- weights files ----------------------------------------------------------------------------------------


# --- importing -------------------------------------------------------------------------------------------


def import_model(
    architecture: str,
    weights: str | os.PathLike,
    out: str | os.PathLike,
    *,
    num_classes: int | None = None,
    in_channels: int = 3,
    image_size: int = 224,
    options: Mapping | None = None,
    mean: Sequence[float] | None = IMAGENET_MEAN,
    std: Sequence[float] | None = IMAGENET_STD,
    scale: float | None = 1 / 255,
    trust: Iterable[str] = (),
    seed: int = 0,
) -> ImportReport:
    """Build ``architecture``, load ``weights`` strictly, optionally replace the head, write a checked bundle.

    Args:
        architecture: registered name, ``torchvision.models.<name>`` or ``package.module:factory``.
        weights: safetensors or ``torch.save``-d state dict.
        num_classes: replace the classifier for this many classes (default: keep the source's, read from
            the weights).
        image_size: the side of the square input the model will be fed (recorded; also passed to the
            factory, which may size static paddings from it).
        options: extra factory arguments (JSON-able), recorded in the bundle.
        mean, std, scale: the input normalisation the model expects, ``(pixels * scale - mean) / std``
            (default: ImageNet statistics of pixels in [0, 1]); ``None`` records none.
        trust: modules whose factories this call may import (a user factory named here is always trusted).
        seed: initialisation of a replaced head.
    """
    out = Path(out)
    options = dict(options or {})
    notes: list[str] = []
    trust = list(trust)
    if ":" in architecture:  # the user named this factory: that is the trust decision, for this call
        trust.append(architecture.partition(":")[0])
    with torch.random.fork_rng(devices=[]):  # builds the architecture first: a bad name fails before any file
        probe = create_model(architecture, num_classes=2, in_channels=in_channels, image_size=image_size, **options)
    state = read_state_dict(weights)
    source_classes = _source_classes(probe, architecture, state, weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        source = create_model(architecture, num_classes=source_classes, in_channels=in_channels,
                              image_size=image_size, **options)
    load_strict(source, state, where=str(weights))
    source.eval()
    head_name = _module_name(source, classifier(source))
    model = source
    if num_classes is not None and num_classes != source_classes:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = create_model(architecture, num_classes=num_classes, in_channels=in_channels,
                                 image_size=image_size, **options)
        head_keys = {k for k in model.state_dict() if k.startswith(f"{head_name}.")}
        load_strict(model, {k: v for k, v in state.items() if not k.startswith(f"{head_name}.")},
                    where=str(weights), skip=head_keys)
        model.eval()
        notes.append(f"classifier {head_name!r} replaced: {source_classes} -> {num_classes} classes "
                     f"(fresh initialisation, seed {seed}); fine-tune before use")
    spec = _input_spec(mean, std, scale)
    input_shape = (in_channels, image_size, image_size)
    metadata = {"import": {"architecture": architecture, "weights": str(weights), "options": options,
                           "source_num_classes": source_classes, "head_replaced": model is not source,
                           "trusted_module": architecture.partition(":")[0] if ":" in architecture else None,
                           "notes": notes}}
    save_bundle(model, out, input_shape=input_shape, recipe={"import": metadata["import"]}, metadata=metadata,
                input_spec=spec)
    diff, compared = _parity(source, out, input_shape, head_name, replaced=model is not source, trust=trust)
    return ImportReport(str(out), architecture, str(weights), source_classes, num_classes or source_classes,
                        model is not source, list(input_shape), spec.get("mean"), spec.get("std"), spec.get("scale"),
                        count_params(model), count_macs(model, input_shape), diff, compared, notes)


def import_bundle(source: str | os.PathLike, out: str | os.PathLike, *, trust: Iterable[str] = (),
                  origin: str | None = None) -> ImportReport:
    """Re-write a bundle (e.g. a registered version's, downloaded by the edge) after loading and checking it.

    Args:
        origin: where the bundle came from (``models:/name/3``, ``s3://...``), recorded in metadata.
    """
    source, out = Path(source), Path(out)
    if source.resolve() == out.resolve():
        raise ModelImportError(f"{out}: the output directory is the source bundle itself; choose another --out")
    model = load_bundle(source, verify=True, trust_modules=trust)
    info = read_bundle_info(source)
    arch = info["architecture"]
    spec = {k: v for k, v in (arch.get("input") or {}).items()}
    input_shape = tuple(arch["input_shape"])
    metadata = {**info["metadata"], "import": {"bundle": origin or str(source)}}
    save_bundle(model, out, input_shape=input_shape, recipe=info["recipe"], metadata=metadata,
                input_spec=spec or None)
    diff, compared = _parity(model, out, input_shape, "", replaced=False, trust=trust)
    num_classes = int(arch.get("num_classes") or arch["arch"].get("num_classes"))
    return ImportReport(str(out), arch["arch"]["name"], origin or str(source), num_classes, num_classes, False,
                        list(input_shape), spec.get("mean"), spec.get("std"), spec.get("scale"), count_params(model),
                        count_macs(model, input_shape), diff, compared, [])


def _source_classes(probe: nn.Module, architecture: str, state: Mapping[str, Tensor], weights) -> int:
    """The number of classes the weights were trained for: rows of the classifier's weight in the file."""
    head = _module_name(probe, classifier(probe))
    key = f"{head}.weight"
    if key not in state:
        raise ModelImportError(f"{weights}: no {key!r} in the weights, so they do not belong to {architecture!r} "
                               f"(whose classifier is {head!r}); keys in the file start with "
                               f"{sorted({k.split('.')[0] for k in state})[:LISTED_KEYS]}")
    return int(state[key].shape[0])


def _module_name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def _input_spec(mean, std, scale) -> dict:
    spec: dict = {}
    if mean is not None:
        spec["mean"] = [float(v) for v in mean]
    if std is not None:
        spec["std"] = [float(v) for v in std]
    if scale is not None and spec:
        spec["scale"] = float(scale)
    return spec


def _parity(source: nn.Module, bundle: Path, input_shape: tuple[int, ...], head_name: str, *, replaced: bool,
            trust: Iterable[str]) -> tuple[float, str]:
    """Load the bundle back from disk and compare it with the source model on a seeded probe batch."""
    loaded = load_bundle(bundle, verify=True, trust_modules=trust)
    probe = torch.randn((PARITY_BATCH, *input_shape), generator=torch.Generator().manual_seed(PARITY_SEED))
    if replaced:
        expected, got = _head_input(source, head_name, probe), _head_input(loaded, head_name, probe)
        compared = "features"
    else:
        with torch.inference_mode():
            expected, got = source.eval()(probe), loaded(probe)
        compared = "logits"
    diff = float((expected - got).abs().max())
    if not diff <= PARITY_RTOL * max(1.0, float(expected.abs().max())):
        raise ModelImportError(f"{bundle}: the bundle does not reproduce the source model ({compared} differ by "
                               f"{diff:.3g}); it was written but must not be used")
    return diff, compared


def _head_input(model: nn.Module, head_name: str, probe: Tensor) -> Tensor:
    seen: list[Tensor] = []
    handle = model.get_submodule(head_name).register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        with torch.inference_mode():
            model.eval()(probe)
    finally:
        handle.remove()
    return seen[-1]


def is_hf_directory(path: str | os.PathLike) -> bool:
    """A Hugging Face model directory (``config.json``), not an idap bundle (``architecture.json``)."""
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file() and not (p / "architecture.json").is_file()


def fine_tune_bundle(bundle: str | os.PathLike, dataset: str, *, trust: Iterable[str] = (), root=None,
                     epochs: float = 1.0, lr: float = 0.01, batch_size: int = 64, seed: int = 0,
                     device: str = "auto", train_limit: int | None = None, test_limit: int | None = None,
                     validation_size: int = 5000, calibration_size: int = 2048, progress: bool = False) -> dict:
    """Fine-tune a bundle on a dataset in place (SGD, one-cycle, the dataset's training transform) and record
    the figures in its metadata; returns ``{"dataset", "epochs", "val_acc", "test_acc", "train_seconds"}``.

    The dataset must match the bundle's input (channels, image size, classes); a dataset normalised otherwise
    than the bundle records draws a warning (a pretrained model wants its own statistics). Splits are cut as
    ``idap compress`` cuts them with the same seed, calibration and validation sizes (defaults: the recipe's),
    so the fine-tune trains on the compression run's training split only.
    """
    import time
    import warnings

    from idap.data.sources import load_dataset
    from idap.data.splits import DataError
    from idap.measure.metrics import resolve_device
    from idap.prune.recovery import train
    from idap.report.evaluate import evaluate_model

    bundle = Path(bundle)
    model = load_bundle(bundle, trust_modules=trust)
    info = read_bundle_info(bundle)
    arch = info["architecture"]
    data = load_dataset(dataset, root=root, seed=seed, train_limit=train_limit, test_limit=test_limit,
                        validation_size=validation_size, calibration_size=calibration_size)
    want = (list(arch["input_shape"]), arch["num_classes"])
    have = ([data.in_channels, data.image_size, data.image_size], data.num_classes)
    if want != have:
        raise DataError(f"{bundle} takes input {want[0]} with {want[1]} classes; dataset {dataset} gives "
                        f"{have[0]} with {have[1]} classes (import with --num-classes / --image-size to match, or "
                        "set the spec's resolution)")
    expected = arch.get("input") or {}
    # Streamed data keeps statistics of pixels in [0, 1] (the bundle's units); in-memory data in raw 0..255.
    data_scale = 1.0 if data.describe().get("streamed") else 1 / 255
    if expected.get("mean") and any(abs(m * data_scale - e) > 0.02
                                    for m, e in zip(data.mean, expected["mean"], strict=False)):
        warnings.warn(f"{dataset} is normalised with mean {[round(m * data_scale, 3) for m in data.mean]} but "
                      f"{bundle} expects {expected['mean']} (set normalization: imagenet in the dataset spec)",
                      stacklevel=2)
    dev = resolve_device(device)
    started = time.perf_counter()
    torch.manual_seed(seed)
    train(model, data.train_x, data.train_y, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=dev,
          progress=progress)
    seconds = time.perf_counter() - started
    figures = evaluate_model(model, data, device=dev)
    model = model.cpu().eval()
    summary = {"dataset": dataset, "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
               "val_acc": figures["val_acc"], "test_acc": figures["test_acc"], "train_seconds": round(seconds, 1),
               "data": data.describe()}
    metadata = {**info["metadata"], "fine_tune": summary, "metrics": figures}
    save_bundle(model, bundle, input_shape=tuple(arch["input_shape"]), recipe=info["recipe"], metadata=metadata,
                input_spec=expected or None)
    load_bundle(bundle, trust_modules=trust)  # the written bundle loads and passes its own parity probe
    return {k: v for k, v in summary.items() if k != "data"}
