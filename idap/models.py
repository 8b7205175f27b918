"""Model registry: every architecture IDAP++ compresses, adapted to small images, built by name.

A timm-style registry (``register_model`` / ``create_model`` / ``list_models``) instead of an if/elif
ladder. Models are always randomly initialised (no download, ever); seeding is the caller's job.
For images of at most ``SMALL_IMAGE`` pixels the ImageNet stems are replaced by 3x3 stride-1 convs and
the stem max-pool is dropped (the CIFAR convention), keeping torchvision's module names, so the same
names work on 8x8 digits, 28x28 Fashion-MNIST and 32x32 CIFAR. Every model remembers how it was built
in ``model.idap_arch`` so a bundle can rebuild the fresh architecture with ``create_model(**arch)``.

The helpers at the end tell the pruning stages what they may touch: ``block_candidates`` (blocks that
stage 2 may replace by ``nn.Identity``), ``prune_exclusions`` (modules whose output channels stage 1 must
keep) and ``classifier``.

Example:
    >>> import torch
    >>> model = create_model("resnet20", num_classes=10, in_channels=1, image_size=28)
    >>> model(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    >>> create_model(**model.idap_arch).idap_arch == model.idap_arch
    True
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.convnext import CNBlock
from torchvision.models.efficientnet import FusedMBConv, MBConv
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock as TVBasicBlock
from torchvision.models.resnet import Bottleneck as TVBottleneck
from torchvision.models.vision_transformer import EncoderBlock, MLPBlock, VisionTransformer

from idap.attention import HeadPrunableAttention
from idap.lm import bert_classifier, llama_lm

SMALL_IMAGE = 64  # images up to this side get CIFAR-style stems (3x3 stride 1, no stem max-pool)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_TASKS: dict[str, str] = {}  # name -> "image" | "text"
# Modules whose factories a *file* (a bundle's architecture.json) may name: the user's explicit choice,
# never the file's. IDAP_TRUSTED_MODULES (comma-separated) adds to it for every process of a run.
TRUST_ENV = "IDAP_TRUSTED_MODULES"
_TRUSTED: set[str] = set()


class ModelError(ValueError):
    """A model name, import path or constructor argument that cannot be built."""


def register_model(name: str, *, task: str = "image") -> Callable:
    """Register ``factory(num_classes, in_channels, image_size, **kwargs) -> nn.Module`` under ``name``.

    ``task`` groups the listing: ``"image"`` models take (N, C, H, W) pixels, ``"text"`` models token ids.
    """
    if not name or ":" in name:
        raise ModelError(
            f"model names must be non-empty and without ':' (reserved for import paths), got {name!r}"
        )

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ModelError(f"model {name!r} is already registered")
        _REGISTRY[name] = factory
        _TASKS[name] = task
        return factory

    return decorator


def trust_modules(*modules: str) -> None:
    """Allow bundles to name factories from these modules (or packages) for the rest of this process.

    A bundle naming ``package.module:factory`` loads only when ``package.module`` (or a parent package)
    was trusted here, through ``$IDAP_TRUSTED_MODULES`` or ``load_bundle(..., trust_modules=...)``.
    """
    for module in modules:
        if not module or not all(part.isidentifier() for part in module.split(".")):
            raise ModelError(f"a trusted module must be a dotted module name like 'mypkg.models', got {module!r}")
        _TRUSTED.add(module)


def trusted_modules(extra: Iterable[str] = ()) -> frozenset[str]:
    """The modules trusted now: ``trust_modules`` calls, ``$IDAP_TRUSTED_MODULES`` and ``extra``."""
    from_env = {m.strip() for m in os.environ.get(TRUST_ENV, "").split(",") if m.strip()}
    return frozenset(_TRUSTED | from_env | set(extra))


def check_trusted(name: str, extra: Iterable[str] = (), *, where: str = "") -> None:
    """Refuse an import-path model name whose module the user did not trust (registered names always pass)."""
    if name in _REGISTRY or ":" not in name:
        return
    module = name.partition(":")[0]
    trusted = trusted_modules(extra)
    if any(module == t or module.startswith(f"{t}.") for t in trusted):
        return
    raise ModelError(
        f"{where}model {name!r} names code in module {module!r}, which is not trusted: a model file may not "
        f"make idap import code. If you wrote or trust that module, allow it with --trust-module {module} "
        f"or {TRUST_ENV}={module}"
    )


def list_models(task: str = "image") -> list[str]:
    """Names of the registered models of a task (``"image"``, the default, or ``"text"``), sorted."""
    return sorted(n for n in _REGISTRY if _TASKS[n] == task)


def create_model(
    name: str, num_classes: int = 10, in_channels: int = 1, image_size: int = 28, **kwargs
) -> nn.Module:
    """Build a randomly initialised model by registered name or ``"package.module:factory"`` path.

    Args:
        name: a name from ``list_models()`` or an import path whose factory takes the same arguments.
        num_classes, in_channels, image_size: the task's shape (image_size is the side of a square input).
        **kwargs: model-specific options (JSON-able). ``kwargs={...}`` is accepted too, so that
            ``create_model(**model.idap_arch)`` rebuilds the same architecture.

    Example:
        >>> create_model("cnn_small", num_classes=3, in_channels=3, image_size=8).idap_arch["num_classes"]
        3
    """
    nested = kwargs.pop("kwargs", None)
    if nested is not None:
        if not isinstance(nested, Mapping):
            raise ModelError(f"kwargs must be a mapping of model options, got {type(nested).__name__}")
        if clash := set(nested) & set(kwargs):
            raise ModelError(f"model options given twice: {sorted(clash)}")
        kwargs = {**nested, **kwargs}
    for arg, value in (
        ("num_classes", num_classes),
        ("in_channels", in_channels),
        ("image_size", image_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"{arg} must be a positive int, got {value!r}")
    for arg in ("weights", "pretrained"):
        if arg in kwargs:
            raise ModelError(
                f"models are always randomly initialised (nothing is downloaded); drop {arg}={kwargs[arg]!r}"
            )
    try:
        json.dumps(kwargs)
    except (TypeError, ValueError) as err:
        raise ModelError(
            f"model options must be JSON-serialisable so a bundle can rebuild {name!r}: {err}"
        ) from None

    factory = _resolve(name)
    shape = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
    try:
        signature = inspect.signature(factory)
    except ValueError:  # some callables (builtins, C extensions) have none: let the call itself complain
        signature = None
    try:
        if signature is not None:
            signature.bind(**shape, **kwargs)
    except TypeError as err:
        raise ModelError(f"model {name!r} does not take options {sorted(kwargs)}: {err}") from None
    model = factory(**shape, **kwargs)
    if not isinstance(model, nn.Module):
        raise ModelError(f"factory for {name!r} returned {type(model).__name__}, not an nn.Module")
    _no_inplace(model)
    model.idap_arch = {"name": name, **shape, "kwargs": dict(kwargs)}
    return model


def _resolve(name: str) -> Callable[..., nn.Module]:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith(TORCHVISION_PREFIX):
        return _torchvision_classifier(name)
    if ":" not in name:
        raise ModelError(
            f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}; "
            "or give an import path 'package.module:factory'"
        )
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelError(f"cannot import module {module_name!r} of model path {name!r}: {err}") from None
    factory = getattr(module, attr, None) if attr else None
    if not callable(factory):
        raise ModelError(f"model path {name!r}: module {module_name!r} has no callable {attr!r}")
    return factory


def _no_inplace(model: nn.Module) -> None:
    # Activation hooks keep references to module outputs; an in-place ReLU/Dropout downstream would
    # silently overwrite what a hook saved, so every in-place flag is switched off.
    for module in model.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False


# --- what the pruning stages may touch -------------------------------------------------------------


def _is_block_candidate(module: nn.Module) -> bool:
    if isinstance(module, (BasicBlock, TVBasicBlock, TVBottleneck)):
        return module.downsample is None and module.stride == 1
    if isinstance(module, (InvertedResidual, MBConv, FusedMBConv)):
        return bool(module.use_res_connect)
    # idap.lm's encoder/decoder layers declare themselves (idap_block)
    return isinstance(module, (CNBlock, EncoderBlock)) or getattr(module, "idap_block", False) is True


def block_candidates(model: nn.Module) -> list[str]:
    """Names of shape-preserving residual blocks that stage 2 may replace by ``nn.Identity``, in forward order.

    Residual blocks without a downsample (stride 1, equal width), skip-connected inverted residuals and
    MBConvs, ConvNeXt blocks and ViT encoder blocks; never the stem, a downsampling block or the head.
    """
    return [name for name, module in model.named_modules() if name and _is_block_candidate(module)]


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
    for module in model.modules():
        if isinstance(module, VisionTransformer):
            excluded.append(module.conv_proj)
        elif isinstance(module, (HeadPrunableAttention, nn.MultiheadAttention)):
            # The module and its projections: a dependency graph would otherwise couple them per channel.
            excluded.extend(module.modules())
        elif isinstance(module, MLPBlock):
            excluded.append([m for m in module if isinstance(m, nn.Linear)][-1])
        elif callable(getattr(module, "residual_writers", None)):  # idap.lm layers: the FFN's output linear
            excluded.extend(module.residual_writers())
    excluded.append(classifier(model))
    return list({id(m): m for m in excluded}.values())


# --- shared stem surgery ---------------------------------------------------------------------------


def _is_small(image_size: int) -> bool:
    return image_size <= SMALL_IMAGE


def _new_conv(old: nn.Conv2d, in_channels: int, kernel: int, stride: int, padding: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, old.out_channels, kernel, stride, padding, bias=old.bias is not None)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def _stem(old: nn.Conv2d, in_channels: int, image_size: int) -> nn.Conv2d:
    """The stock stem for large images, a 3x3 stride-1 conv for small ones; either takes in_channels."""
    if _is_small(image_size):
        return _new_conv(old, in_channels, 3, 1, 1)
    return _new_conv(old, in_channels, old.kernel_size[0], old.stride[0], old.padding[0])


def _drop_pools(layers: nn.Sequential, size: int, downsamplers: tuple[type, ...]) -> int:
    """Replace each 2x pooling that would shrink a ``size``-sided map below 1x1 by Identity; return final size."""
    for key, layer in layers.named_children():
        if isinstance(layer, downsamplers):
            if size < 2:
                setattr(layers, key, nn.Identity())
            else:
                size //= 2
    return size


# --- CIFAR-style networks written here -------------------------------------------------------------


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class SmallCNN(nn.Module):
    """VGG-style conv-bn-relu 32-32-pool-64-64-pool-128, global average pool, 128-512-classes head."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(in_channels, 32), *_conv_bn_relu(32, 32), nn.MaxPool2d(2),
            *_conv_bn_relu(32, 64), *_conv_bn_relu(64, 64), nn.MaxPool2d(2),
            *_conv_bn_relu(64, 128),
        )  # fmt: skip
        _drop_pools(self.features, image_size, (nn.MaxPool2d,))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(128, 512), nn.ReLU(), nn.Linear(512, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class BasicBlock(nn.Module):
    """CIFAR ResNet block, attribute names as torchvision's; option-B (1x1 conv + BN) shortcut on shape change."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) of He et al. 2016 for small images: 3 stages of n blocks, widths 16/32/64."""

    def __init__(self, depth: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ModelError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(16, 16, n, 1)
        self.layer2 = self._stage(16, 32, n, 2)
        self.layer3 = self._stage(32, 64, n, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _stage(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            BasicBlock(inplanes, planes, stride), *(BasicBlock(planes, planes) for _ in range(blocks - 1))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model("cnn_small")
def cnn_small(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return SmallCNN(num_classes, in_channels, image_size)


@register_model("resnet20")
def resnet20(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return CifarResNet(20, num_classes, in_channels)


@register_model("resnet56")
def resnet56(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return CifarResNet(56, num_classes, in_channels)


# --- torchvision networks, stems adapted -----------------------------------------------------------


def _torchvision_resnet(
    builder: Callable, num_classes: int, in_channels: int, image_size: int, **kwargs
) -> nn.Module:
    model = builder(weights=None, num_classes=num_classes, **kwargs)
    model.conv1 = _stem(model.conv1, in_channels, image_size)
    if _is_small(image_size):
        model.maxpool = nn.Identity()
    return model


@register_model("resnet18")
def resnet18(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    return _torchvision_resnet(tvm.resnet18, num_classes, in_channels, image_size, **kwargs)


@register_model("resnet50")
def resnet50(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    return _torchvision_resnet(tvm.resnet50, num_classes, in_channels, image_size, **kwargs)


def _torchvision_vgg(
    builder: Callable, num_classes: int, in_channels: int, image_size: int, **kwargs
) -> nn.Module:
    if not _is_small(image_size):
        model = builder(weights=None, num_classes=num_classes, **kwargs)
        model.features[0] = _new_conv(model.features[0], in_channels, 3, 1, 1)
        _drop_pools(model.features, image_size, (nn.MaxPool2d,))
        return model
    # The ImageNet head (512*7*7 -> 4096 -> 4096, 120M parameters) is useless on a 1x1 map: build on
    # the meta device so it is never allocated, swap in a 512-wide head, then initialise as torchvision.
    with torch.device("meta"):
        model = builder(weights=None, num_classes=num_classes, **kwargs)
        model.features[0] = nn.Conv2d(in_channels, model.features[0].out_channels, 3, 1, 1)
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        dropout = kwargs.get("dropout", 0.5)
        model.classifier = nn.Sequential(
            nn.Linear(512, 512), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(512, 512), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(512, num_classes),
        )  # fmt: skip
    model.to_empty(device="cpu")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.reset_parameters()  # also resets the running statistics left uninitialised by to_empty
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    _drop_pools(model.features, image_size, (nn.MaxPool2d,))
    return model


@register_model("vgg11_bn")
def vgg11_bn(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    return _torchvision_vgg(tvm.vgg11_bn, num_classes, in_channels, image_size, **kwargs)


@register_model("vgg16_bn")
def vgg16_bn(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    return _torchvision_vgg(tvm.vgg16_bn, num_classes, in_channels, image_size, **kwargs)


@register_model("mobilenet_v2")
def mobilenet_v2(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    model = tvm.mobilenet_v2(weights=None, num_classes=num_classes, **kwargs)
    model.features[0][0] = _stem(model.features[0][0], in_channels, image_size)
    return model


@register_model("efficientnet_b0")
def efficientnet_b0(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    model = tvm.efficientnet_b0(weights=None, num_classes=num_classes, **kwargs)
    model.features[0][0] = _stem(model.features[0][0], in_channels, image_size)
    return model


@register_model("densenet121")
def densenet121(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    model = tvm.densenet121(weights=None, num_classes=num_classes, **kwargs)
    model.features.conv0 = _stem(model.features.conv0, in_channels, image_size)
    size = image_size
    if _is_small(image_size):
        model.features.pool0 = nn.Identity()
    else:
        size = math.ceil(image_size / 4)
    for name, layer in model.features.named_children():
        if name.startswith("transition"):
            size = _drop_pools(layer, size, (nn.AvgPool2d,))
    return model


@register_model("convnext_tiny")
def convnext_tiny(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    model = tvm.convnext_tiny(weights=None, num_classes=num_classes, **kwargs)
    # Patchify stem of stride 4, 2 or 1: the largest that leaves >= 8x8 for the three 2x downsamples.
    stride = next((s for s in (4, 2) if image_size // s >= 8), 1)
    kernel, padding = (stride, 0) if stride > 1 else (3, 1)
    model.features[0][0] = _convnext_conv(
        in_channels, model.features[0][0].out_channels, kernel, stride, padding
    )
    size = image_size // stride
    for layer in model.features[1:]:
        down = layer[-1]
        if not isinstance(down, nn.Conv2d):  # a stage of CNBlocks
            continue
        if size < 2:  # images under 8 pixels: keep the width change, skip the spatial one
            layer[-1] = _convnext_conv(down.in_channels, down.out_channels, 1, 1, 0)
        size = max(size // 2, 1)
    return model


def _convnext_conv(cin: int, cout: int, kernel: int, stride: int, padding: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, kernel, stride, padding)
    nn.init.trunc_normal_(conv.weight, std=0.02)  # as torchvision's ConvNeXt
    nn.init.zeros_(conv.bias)
    return conv


def _vit_patch(image_size: int) -> int:
    """Smallest divisor of image_size that is >= 4 and gives at most a 16x16 token grid."""
    bound = max(4, image_size // 16)
    return next((p for p in range(bound, image_size + 1) if image_size % p == 0), image_size)


@register_model("vit_small")
def vit_small(
    num_classes: int,
    in_channels: int,
    image_size: int,
    patch_size: int | None = None,
    hidden_dim: int = 192,
    num_layers: int = 6,
    num_heads: int = 4,
    mlp_dim: int = 384,
    dropout: float = 0.0,
    attention_dropout: float = 0.0,
) -> nn.Module:
    """A 6-layer, 4-head ViT (192 wide) with patch 4 for 8/28/32-pixel images and head-prunable attention."""
    patch = _vit_patch(image_size) if patch_size is None else patch_size
    if patch < 1 or image_size % patch:
        raise ModelError(f"vit_small patch_size must divide image_size {image_size}, got {patch}")
    model = tvm.VisionTransformer(
        image_size=image_size, patch_size=patch, num_layers=num_layers, num_heads=num_heads,
        hidden_dim=hidden_dim, mlp_dim=mlp_dim, dropout=dropout, attention_dropout=attention_dropout,
        num_classes=num_classes,
    )  # fmt: skip
    model.conv_proj = nn.Conv2d(in_channels, hidden_dim, patch, patch)
    nn.init.trunc_normal_(model.conv_proj.weight, std=math.sqrt(1 / (in_channels * patch * patch)))
    nn.init.zeros_(model.conv_proj.bias)
    for layer in model.encoder.layers:
        layer.self_attention = HeadPrunableAttention.from_multihead(layer.self_attention)
    return model


@register_model("resnet_tiny")
def resnet_tiny(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """A 12-layer CIFAR-style ResNet for quick runs (``make demo``): a 16-wide stem, then stages of widths
    32 / 64 / 64 (the first two downsample), with three stride-1 same-width blocks that stage 2 may remove
    (``layer1.1``, ``layer2.1``, ``layer3.0``). About cnn_small's training cost at 28x28."""
    model = CifarResNet(8, num_classes, in_channels)
    model.layer1 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32))
    model.layer2 = nn.Sequential(BasicBlock(32, 64, 2), BasicBlock(64, 64))
    model.layer3 = nn.Sequential(BasicBlock(64, 64))
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


# --- torchvision classification models by name (``idap import``) ------------------------------------------

TORCHVISION_PREFIX = "torchvision.models."


def _torchvision_classifier(name: str) -> Callable[..., nn.Module]:
    """A factory for ``torchvision.models.<builder>``: torchvision's own architecture, unmodified, random init.

    Library code, not a file's: such names need no trust. Only classification builders are accepted.
    """
    builder_name = name[len(TORCHVISION_PREFIX):]
    available = tvm.list_models(module=tvm)
    if builder_name not in available:
        raise ModelError(f"unknown torchvision classification model {name!r}; valid: "
                         f"{', '.join(TORCHVISION_PREFIX + n for n in available)}")
    builder = tvm.get_model_builder(builder_name)

    def factory(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
        if in_channels != 3:
            raise ModelError(f"{name} takes 3-channel (RGB) images, got in_channels={in_channels}")
        return builder(weights=None, num_classes=num_classes, **kwargs)

    return factory


# Text models (idap.lm) on token ids: "image_size" is the token length they are fed.
register_model("bert_classifier", task="text")(bert_classifier)
register_model("llama_lm", task="text")(llama_lm)
