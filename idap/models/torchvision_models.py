"""torchvision architectures adapted to small images, registered by name; always randomly initialised.

Stems and pools are adapted by ``idap.models.stems`` (CIFAR-style stems and no stem max-pool for small images),
keeping torchvision's module names; ``vit_small`` gets head-prunable attention.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from idap.models.attention import HeadPrunableAttention
from idap.models.registry import ModelError, register_model
from idap.models.stems import drop_pools, is_small, new_conv, stem

__all__: list[str] = []  # the architectures are reached by name through idap.models.registry.create_model


def _tvm():
    """torchvision.models, imported when an architecture is built (seconds of start-up otherwise spent by
    every process that only loads a CIFAR model)."""
    from torchvision import models

    return models


# --- torchvision networks, stems adapted -----------------------------------------------------------


def _torchvision_resnet(
    builder: Callable, num_classes: int, in_channels: int, image_size: int, **kwargs
) -> nn.Module:
    model = builder(weights=None, num_classes=num_classes, **kwargs)
    model.conv1 = stem(model.conv1, in_channels, image_size)
    if is_small(image_size):
        model.maxpool = nn.Identity()
    return model


@register_model("resnet18")
def resnet18(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    return _torchvision_resnet(_tvm().resnet18, num_classes, in_channels, image_size, **kwargs)


@register_model("resnet50")
def resnet50(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    return _torchvision_resnet(_tvm().resnet50, num_classes, in_channels, image_size, **kwargs)


def _torchvision_vgg(
    builder: Callable, num_classes: int, in_channels: int, image_size: int, **kwargs
) -> nn.Module:
    if not is_small(image_size):
        model = builder(weights=None, num_classes=num_classes, **kwargs)
        model.features[0] = new_conv(model.features[0], in_channels, 3, 1, 1)
        drop_pools(model.features, image_size, (nn.MaxPool2d,))
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
    drop_pools(model.features, image_size, (nn.MaxPool2d,))
    return model


@register_model("vgg11_bn")
def vgg11_bn(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    return _torchvision_vgg(_tvm().vgg11_bn, num_classes, in_channels, image_size, **kwargs)


@register_model("vgg16_bn")
def vgg16_bn(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    return _torchvision_vgg(_tvm().vgg16_bn, num_classes, in_channels, image_size, **kwargs)


@register_model("mobilenet_v2")
def mobilenet_v2(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    model = _tvm().mobilenet_v2(weights=None, num_classes=num_classes, **kwargs)
    model.features[0][0] = stem(model.features[0][0], in_channels, image_size)
    return model


@register_model("efficientnet_b0")
def efficientnet_b0(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    model = _tvm().efficientnet_b0(weights=None, num_classes=num_classes, **kwargs)
    model.features[0][0] = stem(model.features[0][0], in_channels, image_size)
    return model


@register_model("densenet121")
def densenet121(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    model = _tvm().densenet121(weights=None, num_classes=num_classes, **kwargs)
    model.features.conv0 = stem(model.features.conv0, in_channels, image_size)
    size = image_size
    if is_small(image_size):
        model.features.pool0 = nn.Identity()
    else:
        size = math.ceil(image_size / 4)
    for name, layer in model.features.named_children():
        if name.startswith("transition"):
            size = drop_pools(layer, size, (nn.AvgPool2d,))
    return model


@register_model("convnext_tiny")
def convnext_tiny(num_classes: int, in_channels: int, image_size: int, **kwargs) -> nn.Module:
    model = _tvm().convnext_tiny(weights=None, num_classes=num_classes, **kwargs)
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
    model = _tvm().VisionTransformer(
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
