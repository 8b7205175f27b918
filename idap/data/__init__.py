"""Where the data comes from, and the splits every other package reads.

Holds ``splits`` (the shared types: ``DataSplits``, ``DataError``, the holdout and hash helpers; the only
module the method may import), ``builtin`` (Fashion-MNIST, digits, CIFAR-10 by name), ``sources``
(``load_dataset`` / ``save_splits`` / ``load_splits``), image folders and archives (``image_folder``),
streaming (``streaming``, ``stream_reference``, ``transforms``), dataset specs (``spec``), ``cifar10``, text and
language-model data (``text``, ``lm``) and the up-front checks (``checks``). Imports no model code: it may use
:mod:`idap.atomic`, :mod:`idap.measure` and :mod:`idap.bundle` only.
"""

from idap.data import builtin
from idap.data.builtin import fetch_dataset, list_datasets
from idap.data.sources import load_dataset, load_splits, save_splits
from idap.data.splits import SPEC_SUFFIXES, DataError, DataSplits, input_spec, sample_shape

__all__ = ["SPEC_SUFFIXES", "DataError", "DataSplits", "builtin", "fetch_dataset", "input_spec", "list_datasets",
           "load_dataset", "load_splits", "sample_shape", "save_splits"]

from idap._moved import forward as _forward  # noqa: E402

__getattr__ = _forward(__name__)  # a name of the former module, with a DeprecationWarning
