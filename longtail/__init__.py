"""Long-tailed recognition with multi-expert models: the one installed package.

    import longtail
    run = longtail.train("fmnist_ir100/balpoe.json", seed=1, epochs=2)   # a shipped config by name, or any path
    results = longtail.evaluate(run, posthoc="oracle")                  # a tidy pandas DataFrame

Subpackages: ``utils`` (no project imports), ``data_loader`` and ``model`` (registered data sets, backbones, losses),
``core`` (the registries' builder, extension points, logits), ``trainer`` and ``evaluation`` (siblings on top of
``core``), ``methods`` (plugins), ``cli`` (command lines). The API below is imported on first use, so
``import longtail.utils.config`` stays light.
"""
from __future__ import annotations

from typing import Any

__all__ = ["load_config", "build", "train", "evaluate", "load", "predict", "pipeline", "RunResult"]
__version__ = "0.3.0"


def __getattr__(name: str) -> Any:
    """Import the API lazily (PEP 562)."""
    if name in __all__:
        from longtail import api

        return getattr(api, name)
    raise AttributeError(f"module 'longtail' has no attribute {name!r}")
