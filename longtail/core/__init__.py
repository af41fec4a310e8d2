"""The layer below the training loop and the evaluator: the builder (config -> objects by registered name), the
extension points (config sections, stages, step hooks), optimizers, schedules and combiners, and the one pass that
collects expert logits. ``longtail.trainer`` and ``longtail.evaluation`` both build on it and never import each other."""
from longtail.core import combiner, optim  # noqa: F401  (register the built-in combiners, optimizers and schedules)
