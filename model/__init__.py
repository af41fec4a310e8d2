"""Model layer: expert-batched layers, backbones, the multi-expert wrapper and losses (importing registers them)."""
from model import (calibrated_experts, loss, losses_baseline, losses_ride, losses_sade, resnet_cifar,  # noqa: F401
                   resnet_imagenet, router)
from model.registry import LOSSES, MODELS, WEIGHT_FORMATS  # noqa: F401
