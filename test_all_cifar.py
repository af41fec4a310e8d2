"""Test-agnostic evaluation under the 11 shifted class priors (CIFAR-10/100-LT, Fashion-MNIST-LT).

python test_all_cifar.py -r CKPT [CKPT ...] [--posthoc_bias_correction] [--out DIR]
"""
import sys

from longtail.data_loader.profiles import CIFAR_TEST_PRIORS
from longtail.cli.evaluate import priors_main

if __name__ == "__main__":
    sys.exit(priors_main(CIFAR_TEST_PRIORS, description=__doc__))
