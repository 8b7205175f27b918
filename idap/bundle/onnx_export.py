"""ONNX export of a bundled (or any) model, and the onnxruntime check that proves the export right."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from idap.bundle.format import PARITY_BATCH, BundleError, checked_input_shape, forward, probe_batch
from idap.measure.metrics import eval_mode, model_device

__all__ = ["check_onnx", "export_onnx"]


def export_onnx(
    model: nn.Module, path: str | os.PathLike, *, input_shape: Sequence[int], opset: int = 17
) -> Path:
    """Export to ONNX with a dynamic batch axis (input ``input``, output ``logits``) and run onnx.checker.

    Uses the TorchScript-based exporter (``dynamo=False``): the dynamo exporter needs ``onnxscript``, which
    this project does not depend on. The model's training flag is restored afterwards.
    """
    import onnx

    path = Path(path)
    input_shape = checked_input_shape(input_shape, path)
    probe = probe_batch(input_shape, model=model).to(model_device(model))
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
    probe = probe_batch(checked_input_shape(input_shape, onnx_path), batch=PARITY_BATCH + 1, model=model)
    expected = forward(model, probe.to(model_device(model))).cpu()
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
