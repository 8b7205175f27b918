"""The portable, pickle-free model bundle: format, save / load / parity, structural changes, ONNX export.

Holds ``format`` (file names, JSON and safetensors reading, the input spec), ``store`` (``save_bundle`` /
``load_bundle``), ``changes`` (a pruned model's recorded structure) and ``onnx_export``. May import
:mod:`idap.atomic`, :mod:`idap.measure` and :mod:`idap.models`.
"""

from idap.bundle.format import BundleError, read_input_spec
from idap.bundle.store import load_bundle, read_bundle_info, save_bundle

__all__ = ["BundleError", "load_bundle", "read_bundle_info", "read_input_spec", "save_bundle"]

from idap._moved import forward as _forward  # noqa: E402

__getattr__ = _forward(__name__)  # a name of the former module, with a DeprecationWarning
