"""The engine: the training loop (stage "sgd"), the other stages' base, the built-in sections and step hooks; it names
no method."""
from longtail.trainer import sections, trainer  # noqa: F401  (register init_from and "sgd")
