#!/usr/bin/env bash
# Evaluate every Fashion-MNIST-LT method run (3 seeds) for the issue-3 table, then summarise it.
# Usage: bash tools/fmnist_methods_eval.sh [python] [save_dir] [out_dir] [method ...]  (default: every method)
set -euo pipefail
PY=${1:-.venv/bin/python}
SAVE=${2:-saved}
OUT=${3:-results/fmnist_methods}
PRIORS="forward50 uniform backward50"

# method label -> checkpoint glob, and the source prior its posteriors are calibrated for (EM estimation)
declare -A CKPT=(
  [ce]="fmnist_ir100_ce/seed*/last.pth" [ce_reweight]="fmnist_ir100_ce_reweight/seed*/last.pth"
  [focal]="fmnist_ir100_focal/seed*/last.pth" [ldam_drw]="fmnist_ir100_ldam_drw/seed*/last.pth"
  [balanced_softmax]="fmnist_ir100_la/seed*/last.pth" [crt]="fmnist_ir100_crt/seed*/last.pth"
  [tau_norm]="fmnist_ir100_ce_linear_taunorm0.7/seed*/last.pth" [ride]="fmnist_ir100_ride/seed*/last.pth"
  [ride_distill]="fmnist_ir100_ride_distill/seed*/last.pth" [ride_router]="fmnist_ir100_ride_router/seed*/last.pth"
  [sade]="fmnist_ir100_sade/seed*/last.pth" [cbe]="fmnist_ir100_cbe_calibration/seed*/last.pth"
  [balpoe]="fmnist_ir100_balpoe/seed*/last.pth"
)
declare -A SOURCE=([ce]=train [focal]=train)  # ce_reweight: its re-weighting makes the posteriors ~balanced
METHODS=("${@:4}")
[ ${#METHODS[@]} -gt 0 ] || METHODS=("${!CKPT[@]}")
for m in "${METHODS[@]}"; do
  G="$SAVE/${CKPT[$m]}"
  src=${SOURCE[$m]:-uniform}
  "$PY" test.py -r "$G" --out "$OUT/$m/uniform" > "$OUT.$m.log" 2>&1
  "$PY" test_all_cifar.py -r "$G" --priors $PRIORS --posthoc_bias_correction --out "$OUT/$m/oracle" >> "$OUT.$m.log" 2>&1
  "$PY" test_all_cifar.py -r "$G" --priors $PRIORS --posthoc_bias_correction estimate \
        --set evaluation.source_prior=$src --out "$OUT/$m/estimate" >> "$OUT.$m.log" 2>&1
  if [ "$m" = sade ] || [ "$m" = balpoe ]; then
    "$PY" test_all_cifar.py -r "$G" --priors $PRIORS --test_time_aggregation --out "$OUT/$m/tta" >> "$OUT.$m.log" 2>&1
  fi
done
"$PY" tools/summarize_methods.py "$OUT"
