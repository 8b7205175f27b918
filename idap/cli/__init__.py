"""The ``idap`` console commands: ``commands`` (the parser: data, train, compress, evaluate, import), ``common`` (what they share), ``compress_cmd`` (``idap compress``), ``text``
(``idap text ...``, registered by ``main`` from one side) and ``import_cmd`` (``idap import``). The top of the
library: it may import every other package of idap; nothing in idap imports it.
"""

from idap.cli.commands import build_parser, main, run, train_dense
from idap.cli.common import log, print_step
from idap.cli.compress_cmd import CompressOptions, run_compress

__all__ = ["CompressOptions", "build_parser", "log", "main", "print_step", "run", "run_compress", "train_dense"]

from idap._moved import forward as _forward  # noqa: E402

__getattr__ = _forward(__name__)  # a name of the former module, with a DeprecationWarning
