"""The MLflow model of an IDAP bundle, logged *from code*: MLflow stores this file, never a pickle.

``components.services.registry`` logs every compressed model (and its dense baseline) with

    mlflow.pyfunc.log_model(name="model", python_model="components/mlflow_model.py",
                            artifacts={"bundle": "<bundle dir>"}, code_paths=[<idap sources>], ...)

and ``mlflow.pyfunc.load_model("models:/NAME@champion")`` runs this file, which rebuilds the model with
``idap.bundle.store.load_bundle``: architecture from JSON, weights from safetensors, then the bundle's parity
probe must reproduce the saved outputs. Nothing is unpickled at any point.

Why a pyfunc around the bundle rather than ``mlflow.pytorch`` (default ``pt2`` / torch.export):

* ``pt2`` loads back as a ``torch.fx.GraphModule``: the architecture (registry name, per-layer widths,
  removed blocks) is gone, so the model can be neither pruned further, fine-tuned as its own class, nor
  exported to a bundle again; the other ``mlflow.pytorch`` format is a whole-object pickle, gated by
  MLflow and fragile across code versions.
* the bundle is this project's portable format (``idap.bundle.store``): pickle-free, loadable without the
  code that did the surgery, with a parity check at every load and an optional ONNX file. Wrapping it
  keeps one format everywhere: a registered version's ``bundle`` artifact is exactly what
  ``idap evaluate`` / ``idap compress --model-dir`` read.

Input: **raw pixels**, as read from the dataset (0-255 for 8-bit images, 0-16 for scikit-learn's digits),
any real dtype (uint8, float32, float64), shaped ``(N, C, H, W)``, ``(N, H, W)`` for one channel, or one
sample without the batch axis. The model normalises inside with the statistics its bundle records
(``architecture.json`` ``input``: ``(pixels * scale - mean) / std``); a bundle that records none takes
already-normalised input. Output: float32 logits ``(N, num_classes)``. Bad input is answered with an
MLflow ``INVALID_PARAMETER_VALUE`` (HTTP 400) that names the expected shape, not the whole input.

A text model (its bundle records ``input`` ``tokens``: vocabulary size and padding id) takes **token ids**
instead, as its own tokenizer (``bundle/tokenizer/``) writes them: integers in ``[0, vocab_size)``, shaped
``(N, tokens)`` (padded with the padding id) or one sample ``(tokens,)``, any integer or integral float dtype.
Output: its logits (an encoder classifier: ``(N, num_classes)``; a decoder LM: ``(N, tokens, vocab)``).
"""

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class IdapBundleModel(PythonModel):
    """A pyfunc that serves an IDAP bundle (artifact ``bundle``) on CPU, raw pixels in, logits out."""

    def load_context(self, context) -> None:
        import torch

        from idap.bundle import load_bundle
        from idap.bundle.format import read_input_spec

        path = context.artifacts["bundle"]
        self.model = load_bundle(path, verify=True, map_location="cpu")
        spec = read_input_spec(path)
        self.input_shape = tuple(spec["shape"])
        self.tokens = spec.get("tokens")  # a text model: token ids in, see _token_batch
        channels = self.input_shape[0]
        self.scale = float(spec.get("scale") or 1.0)
        self.mean = None if spec.get("mean") is None else torch.tensor(spec["mean"]).view(1, channels, 1, 1)
        self.std = None if spec.get("std") is None else torch.tensor(spec["std"]).view(1, channels, 1, 1)
        self._torch = torch

    def _batch(self, model_input) -> np.ndarray:
        if isinstance(model_input, dict):  # serving: {"input": array} or {"inputs": array}
            model_input = next(iter(model_input.values()))
        if hasattr(model_input, "to_numpy"):  # a DataFrame / Series of flattened samples
            model_input = model_input.to_numpy()
        try:
            x = np.asarray(model_input, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise _bad_input(f"input must be numeric pixels ({error})") from None
        shape, size = self.input_shape, int(np.prod(self.input_shape))
        if tuple(x.shape) == shape:  # one sample
            x = x[None]
        elif shape[0] == 1 and x.ndim == len(shape) and tuple(x.shape[1:]) == shape[1:]:  # (N, H, W), one channel
            x = x[:, None]
        elif x.ndim == 2 and x.shape[1] == size:  # rows of flattened pixels (a DataFrame)
            x = x.reshape(len(x), *shape)
        elif x.ndim == 1 and x.size == size:  # one flattened sample
            x = x.reshape(1, *shape)
        if tuple(x.shape[1:]) != shape:
            raise _bad_input(f"expected raw pixels of shape (N, {', '.join(map(str, shape))}) or one sample "
                             f"{shape}, got an array of shape {tuple(x.shape)}")
        if not np.isfinite(x).all():
            raise _bad_input("input holds NaN or Inf values")
        return np.ascontiguousarray(x)

    def _token_batch(self, model_input) -> np.ndarray:
        if isinstance(model_input, dict):
            model_input = next(iter(model_input.values()))
        if hasattr(model_input, "to_numpy"):
            model_input = model_input.to_numpy()
        try:
            x = np.asarray(model_input, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise _bad_input(f"input must be integer token ids ({error})") from None
        if x.ndim == 1:
            x = x[None]
        vocab = int(self.tokens["vocab_size"])
        if x.ndim != 2 or x.shape[1] < 1:
            raise _bad_input(f"expected token ids of shape (N, tokens) or one sample (tokens,) (the model was "
                             f"compressed at {self.input_shape[0]} tokens), got an array of shape {tuple(x.shape)}")
        if not np.isfinite(x).all() or (x != np.round(x)).any() or x.min() < 0 or x.max() >= vocab:
            raise _bad_input(f"token ids must be integers in [0, {vocab}) (this model's vocabulary)")
        return np.ascontiguousarray(x.astype(np.int64))

    def predict(self, context, model_input, params: dict | None = None) -> np.ndarray:
        torch = self._torch
        if self.tokens:
            ids = torch.from_numpy(self._token_batch(model_input))
            try:
                with torch.no_grad():
                    return self.model(ids).numpy()
            except ValueError as error:  # e.g. more tokens than the model has positions
                raise _bad_input(str(error)) from None
        x = torch.from_numpy(self._batch(model_input))
        if self.mean is not None and self.std is not None:
            x = (x * self.scale - self.mean) / self.std
        with torch.no_grad():
            return self.model(x).numpy()


def _bad_input(message: str):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


mlflow.models.set_model(IdapBundleModel())
