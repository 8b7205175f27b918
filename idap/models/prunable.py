"""What the pruning stages may touch: removable blocks, channels that must be kept, the classifier.

``block_candidates`` names the blocks that stage 2 may replace by ``nn.Identity``, ``prune_exclusions`` the
modules whose output channels stage 1 must keep, ``classifier`` the final layer. They work on any model the
registry (``idap.models.registry``) builds, and on torchvision's and ``idap.models.lm``'s blocks wherever they appear.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

from torch import nn

from idap.models.attention import HeadPrunableAttention
from idap.models.cifar_models import BasicBlock
from idap.models.registry import ModelError

__all__ = ["block_candidates", "classifier", "prune_exclusions"]


def _tv() -> SimpleNamespace:
    """torchvision's block classes, or empty tuples while torchvision is not loaded: no model can hold an
    instance of a class whose module was never imported, and importing torchvision costs every pipeline
    step seconds of start-up it does not need for the models that do not use it."""
    if "torchvision.models" not in sys.modules:
        return SimpleNamespace(resnet=(), inverted=(), blocks=(), vit=(), mlp=())
    from torchvision.models.convnext import CNBlock
    from torchvision.models.efficientnet import FusedMBConv, MBConv
    from torchvision.models.mobilenetv2 import InvertedResidual
    from torchvision.models.resnet import BasicBlock as TVBasicBlock
    from torchvision.models.resnet import Bottleneck as TVBottleneck
    from torchvision.models.vision_transformer import EncoderBlock, MLPBlock, VisionTransformer

    return SimpleNamespace(resnet=(TVBasicBlock, TVBottleneck), inverted=(InvertedResidual, MBConv, FusedMBConv),
                           blocks=(CNBlock, EncoderBlock), vit=(VisionTransformer,), mlp=(MLPBlock,))


def _is_block_candidate(module: nn.Module, tv: SimpleNamespace) -> bool:
    if isinstance(module, (BasicBlock, *tv.resnet)):
        return module.downsample is None and module.stride == 1
    if isinstance(module, tv.inverted):
        return bool(module.use_res_connect)
    # idap.models.lm's encoder/decoder layers declare themselves (idap_block)
    return isinstance(module, tv.blocks) or getattr(module, "idap_block", False) is True


def block_candidates(model: nn.Module) -> list[str]:
    """Names of shape-preserving residual blocks that stage 2 may replace by ``nn.Identity``, in forward order.

    Residual blocks without a downsample (stride 1, equal width), skip-connected inverted residuals and
    MBConvs, ConvNeXt blocks and ViT encoder blocks; never the stem, a downsampling block or the head.
    """
    tv = _tv()
    return [name for name, module in model.named_modules() if name and _is_block_candidate(module, tv)]


def classifier(model: nn.Module) -> nn.Module:
    """The final classification layer: the last ``nn.Linear`` registered in the model (ModelError if none)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ModelError(f"{type(model).__name__} has no nn.Linear classifier")
    return linears[-1]


def prune_exclusions(model: nn.Module) -> list[nn.Module]:
    """Modules whose output channels must never be pruned.

    The classifier, and for transformers the patch embedding, every attention module with its
    projections (heads are pruned on their own) and the second Linear of every MLP block (those write
    the residual stream). Pass it as ``ignored_layers`` when asking a dependency graph for groups.
    """
    excluded: list[nn.Module] = []
    tv = _tv()
    for module in model.modules():
        if isinstance(module, tv.vit):
            excluded.append(module.conv_proj)
        elif isinstance(module, (HeadPrunableAttention, nn.MultiheadAttention)):
            # The module and its projections: a dependency graph would otherwise couple them per channel.
            excluded.extend(module.modules())
        elif isinstance(module, tv.mlp):
            excluded.append([m for m in module if isinstance(m, nn.Linear)][-1])
        elif callable(getattr(module, "residual_writers", None)):  # idap.models.lm layers: the FFN's output linear
            excluded.extend(module.residual_writers())
    excluded.append(classifier(model))
    return list({id(m): m for m in excluded}.values())
