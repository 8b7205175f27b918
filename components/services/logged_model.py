"""A bundle as an MLflow model: parity-checked, logged pickle-free (models-from-code), loaded back and compared.

The logged model is ``components/mlflow_model.py`` around the bundle directory, with idap's sources as
``code_paths`` and pinned pip requirements; ``bundle_digest`` names a bundle's content, so registering the
same bundle twice finds the existing version.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from components.services.mlflow_backend import get_client
from components.services.promotion import PromotionError

MODEL_CODE = Path(__file__).resolve().parents[1] / "mlflow_model.py"  # components/mlflow_model.py
PARITY_ATOL = 1e-5
# Requirements of a logged model: idap's own imports (its code travels with the model, see log_bundle_model).
MODEL_REQUIREMENTS = ("mlflow", "torch", "torchvision", "torch-pruning", "numpy", "safetensors", "pyyaml", "tqdm")


def check_bundle(directory: Path) -> dict:
    """Load and parity-check a bundle; an example input and the model's output on it.

    The example is the parity probe's first row, given in the served model's input space: raw pixels
    where the bundle records a normalisation (``input_spec`` mean / std / scale; ``mlflow_model`` applies
    it inside), the probe itself otherwise."""
    import numpy as np
    import torch
    from safetensors.numpy import load_file

    from idap.bundle import load_bundle, read_bundle_info
    from idap.bundle.format import PARITY, read_input_spec

    model = load_bundle(directory, verify=True)
    info = read_bundle_info(directory)
    probe = np.ascontiguousarray(load_file(str(Path(directory) / PARITY))["input"][:1].astype(np.float32))
    with torch.no_grad():
        expected = model(torch.from_numpy(probe)).numpy()
    spec = read_input_spec(directory)
    example = probe
    if spec.get("mean") is not None and spec.get("std") is not None:
        shape = (1, probe.shape[1], 1, 1)
        mean = np.asarray(spec["mean"], dtype=np.float32).reshape(shape)
        std = np.asarray(spec["std"], dtype=np.float32).reshape(shape)
        example = np.ascontiguousarray((probe * std + mean) / float(spec.get("scale") or 1.0), dtype=np.float32)
    normalization = spec if spec.get("mean") is not None and spec.get("std") is not None else None
    if spec.get("tokens"):  # a text model is served token ids
        example = example.astype(np.int64)
    return {"input_shape": tuple(info["architecture"]["input_shape"]), "num_classes": int(expected.shape[-1]),
            "example": example, "expected": expected, "normalization": normalization, "tokens": spec.get("tokens")}


def log_bundle_model(run_id: str, bundle_dir: Path, name: str, checked: dict):
    """Log a bundle as a models-from-code pyfunc (no pickle) with explicit pip requirements (inference of
    requirements would take 9-19 s). idap's sources travel with the model (``code_paths``), so it loads where
    idap is not installed, with the code that built it.

    No tensor signature: MLflow enforces a tensor spec's dtype and rank strictly (float64 or one sample
    without the batch axis would be refused before the model sees it) and would infer one from an input
    example, so the served model checks its input itself (``components/mlflow_model.py``) and the contract
    is written in the model's metadata (``idap_input``) and the version's tags and description. The example
    request ships as the artifact ``input_example.json`` (``{"inputs": ...}``, raw pixels). Everything is
    logged from relative paths in a scratch directory, so MLmodel names no path of this machine's tree.
    """
    import json

    import mlflow
    from mlflow.models import Model

    import idap

    # MLflow 3 files a logged model under the *fluent* experiment, not the run's: align them.
    mlflow.set_experiment(experiment_id=get_client().get_run(run_id).info.experiment_id)
    with tempfile.TemporaryDirectory(prefix="idap-model-") as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*type hint.*")
        root = Path(tmp)
        shutil.copytree(Path(idap.__file__).parent, root / "idap", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        local = Path("files") / Path(bundle_dir).name  # MLflow stores it as artifacts/<the bundle's name>
        shutil.copytree(bundle_dir, root / local)
        shutil.copyfile(MODEL_CODE, root / MODEL_CODE.name)
        (root / "input_example.json").write_text(json.dumps({"inputs": checked["example"].tolist()}))
        with contextlib.chdir(root):
            return Model.log(artifact_path=None, name=name, flavor=mlflow.pyfunc, run_id=run_id,
                             python_model=MODEL_CODE.name, artifacts={"bundle": str(local), "input_example": "input_example.json"},
                             code_paths=["idap"], pip_requirements=_pip_requirements(),
                             metadata={"idap_bundle_digest": bundle_digest(bundle_dir), "idap_input": input_contract(checked)})


def input_contract(checked: dict) -> str:
    """What the served model takes, in one line (model metadata and the version's ``idap.input`` tag)."""
    shape = ", ".join(map(str, checked["input_shape"]))
    if checked.get("tokens"):
        return (f"int64 token ids of the bundle's tokenizer (bundle/tokenizer/), shape (N, {shape}) or one sample "
                f"({shape}), in [0, {checked['tokens']['vocab_size']}); output float32 logits")
    norm = checked.get("normalization")
    inside = (f"normalised inside with mean {norm['mean']} / std {norm['std']} (x scale {norm.get('scale') or 1:g})"
              if norm else "already normalised like the training data (the bundle records no statistics)")
    return (f"raw pixels, shape (N, {shape}) or one sample ({shape}), any real dtype; {inside}; "
            f"output float32 logits (N, {checked['num_classes']})")


def check_logged(model_uri: str, checked: dict) -> None:
    """Load the logged model back from the store and compare it with the bundle before registering it."""
    import mlflow
    import numpy as np

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*type hint.*")
        got = np.asarray(mlflow.pyfunc.load_model(model_uri).predict(checked["example"]))
    expected = checked["expected"]
    diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else math.inf
    if not diff <= PARITY_ATOL * max(1.0, float(np.abs(expected).max())):
        raise PromotionError(f"the logged model {model_uri} does not reproduce its bundle (max |diff| {diff:.3g}); "
                             "not registered")


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in MODEL_REQUIREMENTS:
        try:
            out.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:
            out.append(dist)
    return out


def bundle_digest(directory: str | os.PathLike) -> str:
    """sha256 over a bundle's defining files (architecture, weights, recipe, parity probe): equal digests,
    equal models. Metadata (timings) is left out, so the same model measured twice has one digest."""
    from idap.bundle.format import REQUIRED_FILES

    h = hashlib.sha256()
    for name in sorted(REQUIRED_FILES):
        path = Path(directory) / name
        h.update(name.encode() + b"\0")
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()
