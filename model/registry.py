"""Registries of the model layer: architectures and losses."""
from utils.registry import Registry

MODELS = Registry("model")
LOSSES = Registry("loss")
