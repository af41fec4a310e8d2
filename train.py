"""Train a long-tailed recognition model: python train.py -c CONFIG [--seed N] [overrides] (see tools/train.py)."""
import sys

from longtail.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
