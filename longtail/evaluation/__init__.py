"""Evaluation: expert logits collected once per checkpoint, then every metric, test prior, post-hoc correction and
test-time procedure works on them (command-line parsing lives in longtail/cli/evaluate.py)."""
from longtail.evaluation import estimators, posthoc, report  # noqa: F401  (register the built-in corrections and "mean")
