"""Weight-file formats for ``init_from``: each entry maps a file onto a model's state-dict keys."""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from model.registry import WEIGHT_FORMATS
from utils.checkpoint import load_checkpoint, strip_prefixes


@WEIGHT_FORMATS.register("framework")
def load_framework_checkpoint(path: str, model: nn.Module) -> dict[str, Any]:
    """A checkpoint written by this framework's trainer (its ``model`` entry, wrapper prefixes stripped)."""
    return strip_prefixes(load_checkpoint(path)["model"])
