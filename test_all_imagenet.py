"""Test-agnostic evaluation of ImageNet-LT (and Places-LT) checkpoints under the 11 shifted class priors.

forward50 ... uniform ... backward50; the lists are read from the checkpoint's data_loader.args.txt_dir
(ImageNet_LT_<prior>.txt or Places_LT_<prior>.txt, see data_txt/README.md).
python test_all_imagenet.py -r CKPT [CKPT ...] [--posthoc_bias_correction] [--out DIR]
"""
import sys

from longtail.data_loader.profiles import IMAGENET_TEST_PRIORS
from longtail.cli.evaluate import priors_main

if __name__ == "__main__":
    sys.exit(priors_main(IMAGENET_TEST_PRIORS, description=__doc__))
