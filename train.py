"""Train a long-tailed recognition model: python train.py -c CONFIG [--seed N] [overrides]."""
import sys

from trainer.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
