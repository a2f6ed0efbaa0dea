#!/usr/bin/env bash
# What each change of the fast recipe is worth after one epoch: the recipe
# with one change undone at a time, seeds 1-3, at each process count given.
#
#   bash scripts/recipe_ablation.sh DATA_DIR [PROCESSES...]   (default: 2 8)
#
# Prints a markdown table: test accuracy after epoch 1 per seed (a run that
# stops with an error shows "stopped").
set -euo pipefail
data=$(cd "${1:?usage: recipe_ablation.sh DATA_DIR [PROCESSES...]}" && pwd)
shift
[ $# -gt 0 ] || set -- 2 8
main=$(cd "$(dirname "$0")/.." && pwd)/main.py
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
variants=(
  "the recipe before (betas 0.9/0.999, dropout 0.5)|--betas 0.9,0.999 --dropout 0.5"
  "dropout 0.5 instead of 0.1|--dropout 0.5"
  "betas 0.9/0.999 instead of 0.7/0.9|--betas 0.9,0.999"
  "fast|"
  "fast, peak lr 0.01|--lr 0.01"
)
echo "| variant of --recipe fast --epochs 1 | processes | seed 1 | seed 2 | seed 3 |"
echo "| --- | ---: | ---: | ---: | ---: |"
for processes in "$@"; do
  for variant in "${variants[@]}"; do
    name=${variant%%|*}
    read -ra extra <<<"${variant#*|}"
    row="| $name | $processes |"
    for seed in 1 2 3; do
      out=$(cd "$work" && python "$main" --recipe fast --epochs 1 --seed "$seed" \
        --num-processes "$processes" --data-dir "$data" --checkpoint "$work/a.pth" \
        --checkpoint-interval 0 "${extra[@]}" 2>&1 || true)
      accuracy=$(grep -oE 'epoch 1/1: test loss [0-9.]+, accuracy [0-9.]+%' <<<"$out" \
        | grep -oE '[0-9.]+%$' || echo stopped)
      row="$row $accuracy |"
    done
    echo "$row"
  done
done
