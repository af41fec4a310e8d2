"""Model layer: expert-batched layers, backbones, the multi-expert wrapper and losses (importing registers them)."""
from model import loss, resnet_cifar, resnet_imagenet, weights  # noqa: F401
from model.registry import LOSSES, MODELS, WEIGHT_FORMATS  # noqa: F401
