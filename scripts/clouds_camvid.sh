#!/usr/bin/env bash
# CLOUDS-style self-training on CamVid shifts, as measured in docs/clouds.md:
# a base EfficientNet-Lite0 trained on camvid-day, then per target domain the
# zero-shot base, the oracle adapter (trained with the target's labels), and
# adapters self-trained by `semla adapter adapt` from the target's unlabeled
# train frames (without refinement, and refined by region growing), each
# scored on the target's val frames. Resumable: a finished model or evaluation
# is reused.
#
#   bash scripts/clouds_camvid.sh DATA_ROOT efficientnet-lite0-57934424.pth OUT [TARGET...]
#
# Uses target/release/semla (cargo build --release -p semla-cli). About 4
# minutes per target on two cores, plus 2 minutes for the base.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 DATA_ROOT WEIGHTS OUT [TARGET...]" >&2
  exit 2
fi
semla="$(cd "$(dirname "$0")/.." && pwd)/target/release/semla"
root=$1 weights=$2 out=$3
shift 3
if [ $# -gt 0 ]; then targets=("$@"); else targets=(camvid-dusk camvid-fog3); fi
size=(--resize 96x128 --crop 96x128)
mkdir -p "$out"
cd "$out"
if [ ! -f base/config.json ]; then
  "$semla" train base --model-kind efficientnet-lite0 --weights "$weights" --domain camvid-day \
    --data-root "$root" "${size[@]}" --batch 4 --lr 2e-3 --steps 240 --out base >&2
fi
score() { # NAME TARGET [ADAPTER]
  local file="eval/$2_$1.json"
  mkdir -p eval
  if [ ! -f "$file" ]; then
    "$semla" --json eval --model base ${3:+--adapter "$3"} --domain "$2" --data-root "$root" \
      --split val --resize 96x128 >"$file.tmp"
    mv "$file.tmp" "$file"
  fi
  python3 -c "import json,sys; print(f\"{100 * json.load(open(sys.argv[1]))['miou']:.1f}\")" "$file"
}
adapt() { # NAME TARGET OPTIONS...
  local name=$1 target=$2
  shift 2
  if [ ! -f "lib/${target}_$name/adapter_config.json" ]; then
    "$semla" adapter adapt --model base --out "lib/${target}_$name" --domain "$target" \
      --source-domain camvid-day --data-root "$root" "${size[@]}" --batch 2 --target-batch 2 \
      --lr 3e-3 --prototype-images 8 --force "$@" >&2
  fi
}
{
  echo "| target | zero-shot | self-training, official EMA (240 steps) | self-training (80 steps) | self-training + region growing (80 steps) | oracle |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: |"
  for t in "${targets[@]}"; do
    if [ ! -f "lib/${t}_oracle/adapter_config.json" ]; then
      "$semla" adapter train --model base --out "lib/${t}_oracle" --domain "$t" --data-root "$root" \
        "${size[@]}" --batch 4 --lr 3e-3 --steps 80 --prototype-images 8 --force >&2
    fi
    adapt official "$t" --steps 240 --ema-every 100 --ema-alpha 0.999
    adapt plain "$t" --steps 80 --ema-every 10 --ema-alpha 0.99
    adapt grow "$t" --steps 80 --ema-every 10 --ema-alpha 0.99 --refine grow --unclaimed teacher --min-area 300
    echo "| $t | $(score zeroshot "$t") | $(score official "$t" "lib/${t}_official") | $(score plain "$t" "lib/${t}_plain") | $(score grow "$t" "lib/${t}_grow") | $(score oracle "$t" "lib/${t}_oracle") |"
  done
} | tee table.md
