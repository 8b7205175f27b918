"""Every architecture IDAP++ compresses, built by name from one registry.

Holds ``registry`` (``register_model`` / ``create_model`` / ``list_models``, trusted modules), the families
that register into it (``cifar_models``: cnn_small, resnet20/56, resnet_tiny; ``torchvision_models``:
torchvision's, stems adapted to small images; ``text_family``: the text classifier and decoder of ``lm``), their building
blocks (``attention``, ``stems``, ``lm_weights``: Hugging Face key maps) and ``prunable`` (what the pruning
stages may touch). The registry imports none of its families: this ``__init__`` imports them once, after it,
so every name is registered wherever ``idap.models`` is imported. May import :mod:`idap.measure` only.
"""

from idap.models import cifar_models, text_family, torchvision_models  # noqa: F401  (they register themselves)
from idap.models.registry import (
    TRUST_ENV,
    ModelError,
    check_trusted,
    create_model,
    list_models,
    register_model,
    trust_modules,
    trusted_modules,
)

__all__ = ["TRUST_ENV", "ModelError", "check_trusted", "create_model", "list_models", "register_model",
           "trust_modules", "trusted_modules"]

from idap._moved import forward as _forward  # noqa: E402

__getattr__ = _forward(__name__)  # a name of the former module, with a DeprecationWarning
