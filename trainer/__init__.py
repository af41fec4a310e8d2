"""Training loop, combiners, evaluation and the command-line entry points."""
