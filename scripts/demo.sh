#!/usr/bin/env bash
# Set up and run l2bn's main job on a CPU in a few minutes: a short training run on real
# CIFAR-10 images from $L2BN_DATA (or ./data; downloaded there when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
export L2BN_DATA=${L2BN_DATA:-data}
l2bn train --download --optimizer nesterov --lr 0.05 --weight-decay 5e-3 \
  --epochs 4 --width 16 --batch-size 64 --json results-train.json
