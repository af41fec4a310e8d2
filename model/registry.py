"""Registries of the model layer: architectures and losses."""
from utils.registry import Registry

MODELS = Registry("model")
LOSSES = Registry("loss")
WEIGHT_FORMATS = Registry("weight format")  # init_from.format: how a weights file maps onto a model
