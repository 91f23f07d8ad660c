#!/usr/bin/env bash
# leaderboards/label-budget from scratch (issue 25 item 4; docs/label-budget.md): synth-xray, the ERM base
# vit-tiny and ROWS' mitigations, each trained on FRACTIONS of the train split (seeded, stratified by
# lesion x sex, nested within a seed; the same validation and test splits), SEEDS seeds per cell; paired
# t-tests of each mitigation against ERM at the same fraction and of ERM against itself at fraction 1,
# Holm over the board's metrics per row, and the minimal detectable difference at 80% power.
#
#   bash bench/label_budget_board.sh                                # the committed configuration
#   SEEDS=2 FRACTIONS=0.25,1 ROWS="erm" bash bench/label_budget_board.sh   # a quick try (same commands)
#
# Budget: <= 40 min wall on the shared 2-core CPU with OMP_NUM_THREADS=1 and one core free for it. One
# seed of vit-tiny at full data trains in ~60 CPU-s; training time scales with the fraction, so the four
# fractions cost ~1.85 full-data trainings per seed and row, plus ~10 s of start-up, inference on the
# 960 val/test images and audits per run. Measured: docs/label-budget.md. JOBS=2 runs two cells at a
# time (same CPU time, about half the wall time on an idle 2-core machine).
set -euo pipefail

SEEDS=${SEEDS:-5}
JOBS=${JOBS:-1}
FRACTIONS=${FRACTIONS:-0.1,0.25,0.5,1}
ROWS=${ROWS:-"erm reweighting threshold-postprocess"}
OUT=${OUT:-runs/label-budget}
BOARD=${BOARD:-leaderboards/label-budget}
N_BOOT=${N_BOOT:-200}   # per-run bootstrap CIs are not used by the board (its CIs are over seeds)
N=${N:-2400}            # synth-xray images (1,440 train / 480 val / 480 test), as the mitigation-imaging board
FB=${FB:-fairbench}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tasks/synth-xray"
root=$(cd "$(dirname "$0")/.." && pwd)
sed -e "s/^  n_boot: .*/  n_boot: $N_BOOT/" -e "s/^  n: .*/  n: $N/" "$root/tasks/synth-xray/task.yaml" > "$work/tasks/synth-xray/task.yaml"
export FAIRBENCH_TASKS_DIR="$work/tasks"

models=()
for row in $ROWS; do
  case $row in
    erm) models+=(vit-tiny) ;;
    *) $FB mitigate --method "$row" --model vit-tiny --task synth-xray --quiet   # a recipe: trains at run time
       models+=("vit-tiny+$row") ;;
  esac
done

# One cell = one model at one fraction, SEEDS seeds (`run --label-fraction` takes the list itself; cells are
# split here only so that JOBS can run two at a time, smallest fractions first).
cells=()
for m in "${models[@]}"; do for f in ${FRACTIONS//,/ }; do cells+=("$m $f"); done; done
printf '%s\n' "${cells[@]}" | sort -k2 -g | xargs -P "$JOBS" -L1 sh -c \
  "$FB"' run --model "$0" --task synth-xray --label-fraction "$1" --seeds '"$SEEDS"' -o '"$OUT"' --quiet >/dev/null'

last=$((SEEDS - 1))
dirs=()
for m in "${models[@]}"; do
  for f in ${FRACTIONS//,/ }; do
    # fraction 1 is the plain full-data run (same run id as no flag); others carry __frac<F> (Python's repr)
    suffix=$(python3 -c "import sys; f = float(sys.argv[1]); print('' if f == 1.0 else f'__frac{f!r}')" "$f")
    dirs+=("$OUT/${m}__synth-xray__seeds0-${last}${suffix}")
  done
done
$FB leaderboard "${dirs[@]}" -o "$BOARD" --reference vit-tiny
