"""Registries of the model layer: architectures, losses, weight-file formats and model extensions."""
from utils.registry import Registry

MODELS = Registry("model")
LOSSES = Registry("loss")
WEIGHT_FORMATS = Registry("weight format")  # init_from.format: how a weights file maps onto a model
# arch.<key> blocks besides type/args: builder(model, block) -> ModelExtension attached under <key> (model/experts.py)
MODEL_EXTENSIONS = Registry("model extension")
