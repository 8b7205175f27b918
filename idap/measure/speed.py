"""Measured speed: PyTorch and ONNX Runtime, batch-1 latency and batch-64 throughput, models interleaved.

Interleaving (every model once per round, medians over rounds) keeps a machine's drift (other load,
frequency changes) from favouring whichever model ran first; ONNX Runtime gets as many intra-op threads
as torch, so both runtimes use the same cores.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

from idap.measure.metrics import measure_latency, measure_throughput


def measure_speed(models: dict[str, nn.Module], input_shape: Sequence[int], *, rounds: int = 3,
                  repeats: int = 30, onnx: dict[str, str | os.PathLike] | None = None) -> dict[str, dict]:
    """Batch-1 latency and batch-64 throughput, models interleaved round by round, medians reported.

    Args:
        onnx: ``{name: path of the model's ONNX export}`` for some or all of ``models``: these are timed in
            ONNX Runtime too (CPU, as many intra-op threads as torch uses), interleaved with the PyTorch
            timings, as ``ort_latency_ms_b1`` / ``ort_throughput_b64``.

    Example:
        >>> measure_speed({"m": nn.Linear(4, 2)}, (4,), rounds=1, repeats=3)["m"]["latency_ms_b1"] > 0
        True
    """
    sessions = {name: ort_session(path) for name, path in (onnx or {}).items() if name in models}
    lat: dict[str, list[float]] = {k: [] for k in models}
    thr: dict[str, list[float]] = {k: [] for k in models}
    ort_lat: dict[str, list[float]] = {k: [] for k in sessions}
    ort_thr: dict[str, list[float]] = {k: [] for k in sessions}
    info: dict[str, dict] = {}
    for name, model in models.items():  # a discarded warm-up round: first calls pay allocator and kernel setup
        measure_latency(model, input_shape, repeats=3)
        if name in sessions:
            time_ort(sessions[name], input_shape, 1, 3)
    for _ in range(rounds):
        for name, model in models.items():
            r1 = measure_latency(model, input_shape, repeats=repeats)
            r64 = measure_throughput(model, input_shape, repeats=max(5, repeats // 3))
            lat[name].append(r1["median_ms"])
            thr[name].append(r64["samples_per_s"])
            info[name] = {"threads": r1.get("threads"), "device": r1.get("device")}
            if name in sessions:
                ort_lat[name].append(1e3 * time_ort(sessions[name], input_shape, 1, repeats))
                ort_thr[name].append(64 / time_ort(sessions[name], input_shape, 64, max(5, repeats // 3)))
    out = {k: {"latency_ms_b1": statistics.median(lat[k]), "throughput_b64": statistics.median(thr[k]), **info[k]}
           for k in models}
    for k in sessions:
        out[k].update({"ort_latency_ms_b1": statistics.median(ort_lat[k]),
                       "ort_throughput_b64": statistics.median(ort_thr[k]), "ort_threads": torch.get_num_threads(),
                       "ort_version": _ort_version()})
    return out


def ort_session(path):
    """An ONNX Runtime CPU session with torch's thread count, so both runtimes get the same cores."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # warnings about unused initializers are noise here
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


def time_ort(session, input_shape: Sequence[int], batch_size: int, repeats: int) -> float:
    """Median seconds of one ``session.run`` on a random batch (after two untimed runs)."""
    x = torch.randn(batch_size, *input_shape).numpy()
    if session.get_inputs()[0].type == "tensor(int64)":  # a text model's token ids (timing ignores their values)
        x = torch.ones((batch_size, *input_shape), dtype=torch.long).numpy()
    feed = {session.get_inputs()[0].name: x}
    for _ in range(2):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return statistics.median(times)
