"""IDAP++: divergence-based structured pruning at filter level and layer level, as a PyTorch library.

Example:
    >>> import idap                                                              # doctest: +SKIP
    >>> data = idap.load_dataset("digits")                                       # doctest: +SKIP
    >>> model = idap.create_model("cnn_small", 10, 1, 8)                         # doctest: +SKIP
    >>> result = idap.compress(model, data, idap.Recipe(max_accuracy_drop=1.0))  # doctest: +SKIP
    >>> idap.save_bundle(result.model, "out/model", input_shape=(1, 8, 8))       # doctest: +SKIP
"""

from idap import _moved
from idap.bundle.format import BundleError
from idap.bundle.onnx_export import export_onnx
from idap.bundle.store import load_bundle, save_bundle
from idap.data.checks import check_data, check_model_fits
from idap.data.sources import load_dataset
from idap.data.splits import DataError, DataSplits
from idap.dense.baseline import train_dense
from idap.models.registry import ModelError, create_model, list_models, register_model
from idap.prune.compress import CompressionResult, compress, run_stages, start_run
from idap.prune.config import ConfigError, Recipe
from idap.prune.divergence import FlowProfile, flow_profile
from idap.prune.importance import create_importance, list_importances
from idap.prune.state import RunContext, RunState, StepRecord, within_budget

__version__ = "0.1.0"

_moved.install()  # the old flat module paths (idap.filter_stage, ...) import for one more release

__all__ = [
    "BundleError", "CompressionResult", "ConfigError", "DataError", "DataSplits", "FlowProfile", "ModelError",
    "Recipe", "RunContext", "RunState", "StepRecord", "check_data", "check_model_fits", "compress",
    "create_importance", "create_model", "export_onnx", "flow_profile", "list_importances", "list_models",
    "load_bundle", "load_dataset", "register_model", "run_stages", "save_bundle", "start_run", "train_dense",
    "within_budget",
]
