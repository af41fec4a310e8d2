"""Model layer: expert-batched layers, backbones, the multi-expert wrapper and losses (importing registers them)."""
from model import losses, original_weights, resnet_cifar, resnet_imagenet  # noqa: F401
from model.registry import LOSSES, MODEL_EXTENSIONS, MODELS, WEIGHT_FORMATS  # noqa: F401
