"""Model layer: expert-batched layers, backbones, the multi-expert wrapper and losses (importing registers them)."""
from longtail.model import foundation, losses, peft, projection, resnet_cifar, resnet_imagenet  # noqa: F401
