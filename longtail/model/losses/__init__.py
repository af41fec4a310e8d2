"""Losses on per-expert logits, registered in ``LOSSES``: every module of this package is imported here, so a new
loss is one new file (docs/extending.md)."""
import importlib
import pkgutil

from longtail.model.losses.base import ExpertLoss, LossOutput  # noqa: F401

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
