"""The MLflow model of an IDAP bundle, logged *from code*: MLflow stores this file, never a pickle.

``components._registry`` logs every compressed model (and its dense baseline) with

    mlflow.pyfunc.log_model(name="model", python_model="components/mlflow_model.py",
                            artifacts={"bundle": "<bundle dir>"}, code_paths=[<idap sources>], ...)

and ``mlflow.pyfunc.load_model("models:/NAME@champion")`` runs this file, which rebuilds the model with
``idap.bundle.load_bundle``: architecture from JSON, weights from safetensors, then the bundle's parity
probe must reproduce the saved outputs. Nothing is unpickled at any point.

Why a pyfunc around the bundle rather than ``mlflow.pytorch`` (default ``pt2`` / torch.export):

* ``pt2`` loads back as a ``torch.fx.GraphModule``: the architecture (registry name, per-layer widths,
  removed blocks) is gone, so the model can be neither pruned further, fine-tuned as its own class, nor
  exported to a bundle again; the other ``mlflow.pytorch`` format is a whole-object pickle, gated by
  MLflow and fragile across code versions.
* the bundle is this project's portable format (``idap.bundle``): pickle-free, loadable without the
  code that did the surgery, with a parity check at every load and an optional ONNX file. Wrapping it
  keeps one format everywhere: a registered version's ``bundle`` artifact is exactly what
  ``idap evaluate`` / ``idap compress --model-dir`` read.

Input: float32 array (N, C, H, W), normalised like the training data (``dataset.normalization`` tag).
Output: float32 logits (N, num_classes).
"""

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class IdapBundleModel(PythonModel):
    """A pyfunc that serves an IDAP bundle (artifact ``bundle``) on CPU."""

    def load_context(self, context) -> None:
        import torch

        from idap.bundle import load_bundle, read_bundle_info

        path = context.artifacts["bundle"]
        self.model = load_bundle(path, verify=True, map_location="cpu")
        self.input_shape = tuple(read_bundle_info(path)["architecture"]["input_shape"])
        self._torch = torch

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        torch = self._torch
        if isinstance(model_input, dict):  # serving: {"input": array}
            model_input = next(iter(model_input.values()))
        x = np.asarray(model_input, dtype=np.float32)
        if x.ndim == len(self.input_shape):  # one sample
            x = x[None]
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"expected input of shape (N, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}"
            )
        with torch.no_grad():
            return self.model(torch.from_numpy(np.ascontiguousarray(x))).numpy()


mlflow.models.set_model(IdapBundleModel())
