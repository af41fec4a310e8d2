"""Evaluation: expert logits collected once per checkpoint, then every metric, test prior, post-hoc correction and
test-time procedure works on them (command-line parsing lives in tools/evaluate.py)."""
