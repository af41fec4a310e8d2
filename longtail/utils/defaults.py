"""The framework's default numbers, in one place (configs override them; utils.config fills them in).

Shot groups follow the long-tailed literature (Liu et al. 2019, OLTR; used by RIDE, SADE, BalPoE): a class is
many-shot with more than 100 training images, few-shot with fewer than 20, medium-shot otherwise.
"""
from __future__ import annotations

MANY_THRESHOLD = 100  # many-shot: n_c > MANY_THRESHOLD
FEW_THRESHOLD = 20  # few-shot: n_c < FEW_THRESHOLD
TRAIN_BATCH_SIZE = 128  # data_loader.args.batch_size (the global batch under DDP)
TEST_BATCH_SIZE = 512  # evaluation.test_batch_size
CACHED_BATCH_SIZE = 256  # batches over cached logits / features (non-SGD stages)
SAVE_DIR = "saved"  # trainer.save_dir: runs go to <save_dir>/<name>/seed<S>-<time>/
RESULTS_DIR = "results"  # evaluations of several checkpoints without --out: <results>/<name>-<script>-<time>/
