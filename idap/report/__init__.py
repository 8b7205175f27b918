"""What a run produced, in numbers and files: the evaluation of a model, the compression report, its files.

Holds ``evaluate`` (``evaluate_model``, ``build_report``) and ``files`` (report.json / report.md / plots).
May import everything below it: measure, models, data, bundle, prune.
"""

from idap.report.evaluate import build_report, compression_report, evaluate_model, stopping_limits

__all__ = ["build_report", "compression_report", "evaluate_model", "stopping_limits"]

from idap._moved import forward as _forward  # noqa: E402

__getattr__ = _forward(__name__)  # a name of the former module, with a DeprecationWarning
