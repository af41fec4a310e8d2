"""Test-agnostic evaluation of iNaturalist 2018 checkpoints under forward3, forward2, uniform, backward2, backward3.

The lists are read from the checkpoint's data_loader.args.txt_dir (iNaturalist18_<prior>.txt, see data_txt/README.md).
python test_all_inat.py -r CKPT [CKPT ...] [--posthoc_bias_correction] [--out DIR]
"""
import sys

from longtail.data_loader.profiles import INAT_TEST_PRIORS
from longtail.cli.evaluate import priors_main

if __name__ == "__main__":
    sys.exit(priors_main(INAT_TEST_PRIORS, description=__doc__))
