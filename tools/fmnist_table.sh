#!/usr/bin/env bash
# Reproduce the README's Fashion-MNIST-LT table: 3 seeds x {BalPoE, CE, LA}, the 11-prior evaluation, then OUT/priors.md.
# Usage: bash tools/fmnist_table.sh [python] [save_dir] [out_dir]
set -euo pipefail
PY=${1:-.venv/bin/python}
SAVE=${2:-saved}
OUT=${3:-results/fmnist_ir100}
for method in balpoe ce la; do
  for seed in 1 2 3; do
    "$PY" train.py -c configs/fmnist_ir100/$method.json --seed $seed --save_dir "$SAVE" --quiet
  done
done
for method in balpoe ce la; do
  "$PY" test_all_cifar.py -r "$SAVE/fmnist_ir100_$method/seed*/last.pth" --posthoc_bias_correction --out "$OUT/$method"
  "$PY" test.py -r "$SAVE/fmnist_ir100_$method/seed*/last.pth" --out "$OUT/$method/uniform"
done
"$PY" tools/summarize_priors.py "$OUT" balpoe ce la
