"""What a model costs and how well it does: accuracy, parameters, MACs, measured latency and throughput.

Every number here is measured the same way for every model, so dense and pruned models (and peers in the
benchmark) compare honestly. MACs are multiply-accumulates counted by PyTorch's own FLOP counter (one
counter for convolutions, grouped/depthwise convolutions, linears, matmuls and attention), named MACs
everywhere — never "FLOPs" (see IDAP_SPEC §7).

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    >>> count_macs(net, (1, 8, 8))
    4864
"""

from __future__ import annotations

import contextlib
import copy
import functools
import platform
import statistics
import time
from collections.abc import Iterator, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.utils import flop_counter

__all__ = [
    "accuracy",
    "count_macs",
    "count_params",
    "measure_latency",
    "measure_throughput",
    "resolve_device",
]


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """Turn a device setting into a ``torch.device``.

    Args:
        spec: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        ValueError: for an unknown spec, or CUDA requested on a machine without a usable GPU.
    """
    text = str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {spec!r} requested but CUDA is not available on this machine "
                f"(torch {torch.__version__}); use 'cpu' or 'auto'"
            )
        device = torch.device(text)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return device
    raise ValueError(f"unknown device {spec!r}; valid: 'auto', 'cpu', 'cuda', 'cuda:N'")


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass on a single sample.

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs // 2), so convolutions of any
    grouping, linears, matmuls and ``scaled_dot_product_attention`` all count under one rule.
    Normalisations, activations and element-wise ops are not counted, as is usual for MACs.

    Args:
        input_shape: one sample's shape, e.g. ``(C, H, W)``; a leading batch dimension of 1 is accepted.
    """
    shape = _single_sample_shape(input_shape)
    # The CPU kernel of scaled_dot_product_attention is not in the counter's registry; without this,
    # attention would silently count as zero MACs on CPU.
    custom = {
        getattr(torch.ops.aten, name): _sdpa_flops
        for name in ("_scaled_dot_product_flash_attention_for_cpu",)
        if hasattr(torch.ops.aten, name)
    }
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=custom)
    with eval_mode(model), torch.no_grad(), counter, _RecurrentMacs(model) as recurrent:
        model(torch.zeros(shape, device=model_device(model)))
    # LSTMs run as fused kernels the counter cannot see (GRU/RNN decompose into counted matmuls on CPU):
    # add the analytic count only where the counter saw nothing inside the module.
    counted, prefix = counter.get_flop_counts(), type(model).__name__
    names = {m: n for n, m in model.named_modules()}
    missing = sum(macs for m, macs in recurrent.macs.items() if not sum(counted.get(f"{prefix}.{names[m]}", {}).values()))
    return int(counter.get_total_flops()) // 2 + missing


# Modules that hold parameters but do no multiply-accumulate work worth counting (by the usual convention).
_NO_MAC_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.Embedding, nn.EmbeddingBag,
                 nn.PReLU, nn.RMSNorm)


def uncounted_modules(model: nn.Module, input_shape: Sequence[int]) -> list[str]:
    """Leaf modules with weight matrices or kernels (parameters of 2 or more dimensions) in which the MAC
    counter saw no work: their cost is missing from :func:`count_macs`, so a MACs reduction claimed for the
    model would be false. Empty when all is counted.

    Recurrent layers (LSTM, GRU, RNN) are counted analytically and never listed; modules with only 1-D
    parameters (scales, biases) do element-wise work, which MACs leave out by convention.
    """
    counter = flop_counter.FlopCounterMode(display=False)
    with eval_mode(model), torch.no_grad(), counter:
        model(torch.zeros(_single_sample_shape(input_shape), device=model_device(model)))
    counted = counter.get_flop_counts()
    prefix = type(model).__name__
    missing = []
    for name, module in model.named_modules():
        if not name or any(True for _ in module.children()):
            continue
        if not any(p.dim() >= 2 for p in module.parameters(recurse=False)):
            continue
        if isinstance(module, (*_NO_MAC_TYPES, nn.RNNBase)):
            continue
        if not sum(counted.get(f"{prefix}.{name}", {}).values()):
            missing.append(name)
    return missing


class _RecurrentMacs:
    """MACs of each nn.LSTM / nn.GRU / nn.RNN call, from the sequence length it is called with: per layer
    and direction, T · gates · H · (input + H), plus the projection of an LSTM with ``proj_size``."""

    GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}

    def __init__(self, model: nn.Module) -> None:
        self.modules = [m for m in model.modules() if isinstance(m, nn.RNNBase)]
        self.macs: dict[nn.Module, int] = {}
        self.handles = []

    def __enter__(self) -> _RecurrentMacs:
        self.handles = [m.register_forward_hook(self._hook) for m in self.modules]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()

    def _hook(self, module: nn.RNNBase, inputs, _output) -> None:
        x = inputs[0]
        if not isinstance(x, Tensor):  # PackedSequence: its lengths vary per sample; count the padded total
            x = x.data
            steps = x.shape[0]
        else:
            steps = x.shape[1] if (module.batch_first and x.dim() == 3) else x.shape[0]
        gates = next((g for t, g in self.GATES.items() if isinstance(module, t)), 1)
        directions = 2 if module.bidirectional else 1
        hidden = module.hidden_size
        state = module.proj_size if getattr(module, "proj_size", 0) else hidden
        total, width = 0, module.input_size
        for _ in range(module.num_layers):
            per_step = gates * hidden * (width + state) + (hidden * state if state != hidden else 0)
            total += directions * steps * per_step
            width = state * directions
        self.macs[module] = self.macs.get(module, 0) + total


def accuracy(
    model: nn.Module,
    x: Tensor | StreamedBatches,
    y: Tensor,
    *,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> float:
    """Top-1 accuracy in percent (0–100), in eval mode; the model's training flag is restored.

    Token logits (N, T, V) with targets (N, T) (a language model, ``idap.data.lm``) give next-token accuracy
    over all N·T target tokens.

    Args:
        x: images as a tensor, or a streamed split (``idap.data.streaming.StreamedSplit``: read in batches).
        device: where batches are sent; default: the model's device. The model itself is not moved.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} samples vs {len(y)} labels")
    if len(x) == 0:
        raise ValueError("accuracy of an empty set is undefined; got 0 samples")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    target = torch.device(device) if device is not None else model_device(model)
    correct = 0
    with eval_mode(model), torch.inference_mode():
        if is_streamed(x):  # labels come with the images; y is the same split's label tensor
            for xb, yb in x.batches(batch_size):
                logits = model(xb.to(target))
                correct += int((logits.argmax(dim=1) == yb.to(logits.device)).sum())
            return 100.0 * correct / len(x)
        for start in range(0, len(x), batch_size):
            logits = model(x[start : start + batch_size].to(target))
            labels = y[start : start + batch_size].to(logits.device)
            tokens = logits.dim() == 3 and labels.dim() == 2  # (N, T, V) next-token logits
            correct += int((logits.argmax(dim=-1 if tokens else 1) == labels).sum())
    return 100.0 * correct / y.numel()


class StreamedBatches(Protocol):
    """A split too large for memory, read in batches (``idap.data.streaming.StreamedSplit``)."""

    def __len__(self) -> int: ...

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                augment: bool = False, drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]: ...


def is_streamed(x: object) -> bool:
    """True for a split read through ``batches()`` rather than indexed as a tensor."""
    return not isinstance(x, Tensor) and callable(getattr(x, "batches", None))


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int = 1,
    warmup: int = 10,
    repeats: int = 50,
    device: str | torch.device | None = None,
) -> dict:
    """Wall-clock time of one forward pass of a batch.

    Args:
        input_shape: one sample's shape ``(C, H, W)``.
        device: default: the model's device. If another device is named, a copy of the model runs there.

    Returns:
        ``{"median_ms", "p90_ms", "mean_ms", "batch_size", "repeats", "threads", "device", "device_name"}``
    """
    times = _time_forward(model, input_shape, batch_size, warmup, repeats, device)
    return {
        "median_ms": 1e3 * statistics.median(times),
        "p90_ms": 1e3 * _percentile(times, 90),
        "mean_ms": 1e3 * statistics.fmean(times),
        "batch_size": batch_size,
        "repeats": repeats,
        **_machine(_target_device(model, device)),
    }


def measure_throughput(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch_size: int = 64,
    warmup: int = 3,
    repeats: int = 20,
    device: str | torch.device | None = None,
) -> dict:
    """Samples per second at a given batch size (from the median batch time).

    Returns:
        ``{"samples_per_s", "median_ms", "batch_size", "repeats", "threads", "device", "device_name"}``
    """
    times = _time_forward(model, input_shape, batch_size, warmup, repeats, device)
    median = statistics.median(times)
    return {
        "samples_per_s": batch_size / median,
        "median_ms": 1e3 * median,
        "batch_size": batch_size,
        "repeats": repeats,
        **_machine(_target_device(model, device)),
    }


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of attention from the shapes FlopCounterMode passes (Q·Kᵀ and P·V, as for the GPU kernels)."""
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put the model in eval mode and restore each module's own training flag afterwards."""
    flags = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags.items():
            module.training = flag


def layer_macs(model: nn.Module, input_shape: Sequence[int]) -> dict[nn.Module, int]:
    """MACs of each convolution and linear layer for one sample (one forward pass with hooks)."""
    macs: dict[nn.Module, int] = {}

    def hook(module, _inputs, output):
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            per_out = (module.in_channels // module.groups) * kh * kw
        else:
            per_out = module.in_features
        macs[module] = macs.get(module, 0) + output.numel() * per_out

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with eval_mode(model), torch.no_grad():
            model(torch.zeros(_single_sample_shape(input_shape), device=model_device(model)))
    finally:
        for h in handles:
            h.remove()
    return macs


def model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _target_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    return model_device(model) if device is None else resolve_device(device)


def _single_sample_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 4:
        if shape[0] != 1:
            raise ValueError(f"input_shape is one sample, e.g. (C, H, W); got batch {shape[0]} in {shape}")
        return shape
    return (1, *shape)


def _time_forward(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int,
    warmup: int,
    repeats: int,
    device: str | torch.device | None,
) -> list[float]:
    if batch_size < 1 or repeats < 1 or warmup < 0:
        raise ValueError(
            f"need batch_size >= 1, repeats >= 1, warmup >= 0; got {batch_size}, {repeats}, {warmup}"
        )
    target = _target_device(model, device)
    # Only a copy moves: timing must never relocate the caller's model.
    runner = model if target == model_device(model) else _copy_to(model, target)
    x = torch.randn((batch_size, *tuple(input_shape)), device=target)
    sync = torch.cuda.synchronize if target.type == "cuda" else _no_sync
    times = []
    with eval_mode(runner), torch.inference_mode():
        for _ in range(warmup):
            runner(x)
        sync()
        for _ in range(repeats):
            start = time.perf_counter()
            runner(x)
            sync()
            times.append(time.perf_counter() - start)
    return times


def _copy_to(model: nn.Module, device: torch.device) -> nn.Module:
    return copy.deepcopy(model).to(device)


def _no_sync() -> None:
    return None


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _machine(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {"threads": torch.get_num_threads(), "device": str(device), "device_name": name}


@functools.cache
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for naming the machine a measurement ran on."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"
