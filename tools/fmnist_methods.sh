#!/usr/bin/env bash
# Method runs on Fashion-MNIST-LT for one seed (BalPoE / CE / LA come from tools/fmnist_table.sh).
# Usage: bash tools/fmnist_methods.sh SEED [python] [save_dir]
set -euo pipefail
S=$1
PY=${2:-.venv/bin/python}
SAVE=${3:-saved}
C=configs/fmnist_ir100
last() { echo "$(ls -td "$SAVE/$1/seed$S"-*/ | head -1)last.pth"; }
run() { "$PY" train.py --seed "$S" --save_dir "$SAVE" --quiet "$@"; }

for m in ce_reweight focal ldam_drw; do run -c $C/$m.json; done
run -c $C/ride.json
run -c $C/ride.json --num_experts 4 --set name=fmnist_ir100_ride_teacher
run -c $C/ride_distill.json --set distill.checkpoint="$(last fmnist_ir100_ride_teacher)"
run -c $C/ride_router.json --set init_from.checkpoint="$(last fmnist_ir100_ride_distill)"
run -c $C/sade.json
run -c $C/ce.json --set arch.args.use_norm=false --set name=fmnist_ir100_ce_linear
run -c $C/crt.json --set init_from.checkpoint="$(last fmnist_ir100_ce_linear)"
"$PY" -m tools.tau_norm -r "$(last fmnist_ir100_ce_linear)" --tau 0.7 --save_dir "$SAVE"
run -c $C/cbe_generalist.json
G=$(last fmnist_ir100_cbe_generalist)
for g in many medium few; do run -c $C/cbe_$g.json --set init_from.checkpoint="$G"; done
run -c $C/cbe_calibration.json --set "ensemble.checkpoints=[\"$(last fmnist_ir100_cbe_many)\", \
    \"$(last fmnist_ir100_cbe_medium)\", \"$(last fmnist_ir100_cbe_few)\"]"
