"""Method plugins: each module registers what its method needs at the engine's extension points
(trainer/hooks.py, evaluation/hooks.py). Every module of this package is imported here, so a new method is one new
file (docs/extending.md); modules elsewhere are loaded with a config's ``imports`` list."""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
