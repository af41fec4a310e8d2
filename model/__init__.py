"""Model layer: expert-batched layers, backbones, the multi-expert wrapper and losses (importing registers them)."""
from model import calibrated_experts, loss, losses_baseline, losses_ride, losses_sade, resnet_cifar, router  # noqa: F401
from model.registry import LOSSES, MODELS  # noqa: F401
