"""Evaluate checkpoints on the uniform test set: python test.py -r CKPT [CKPT ...] [--out DIR]."""
import sys

from longtail.cli.evaluate import uniform_main

if __name__ == "__main__":
    sys.exit(uniform_main())
