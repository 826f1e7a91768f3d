#!/usr/bin/env bash
# Set up and run l2bn's main job on a CPU in a few minutes:
#  1. a small sweep of two optimizers (nesterov, adam) on real CIFAR-10 images found through
#     $L2BN_DATA, else ./data (downloaded there when missing) — far too short for equilibrium,
#     so it shows the pipeline, not the physics — analyzed beside the committed registered run,
#     headline v2 (real CIFAR-10, 100 epochs), re-analyzed now: k [95 % CI] for nesterov,
#     adam and adamw;
#  2. the tracking toy's sweep and analysis, where the theory's slopes come out (k ≈ 1, ½).
# Results (SQLite studies, JSON reports, PNG figures) go to ./results; running it again
# resumes and re-analyzes. About 1 to 2.5 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
export L2BN_DATA=${L2BN_DATA:-data}
mkdir -p results
l2bn download
l2bn sweep sweeps/demo.toml --workers 2 --storage sqlite:///results/demo.db
# The live sweep is far too short to read k; the committed registered run, headline v2 (real
# CIFAR-10, 100 epochs, docs/reproduction/headline2/), is re-analyzed now beside it, each
# labelled as what it is.
l2bn analyze --storage sqlite:///results/demo.db \
  --from-csv docs/reproduction/headline2/nesterov/trials.csv \
  --from-csv docs/reproduction/headline2/adam/trials.csv \
  --from-csv docs/reproduction/headline2/adamw/trials.csv \
  --json results/demo.json --plots results/demo --report results/demo.html
l2bn sweep sweeps/tracking.toml --workers 2 --storage sqlite:///results/tracking.db
l2bn analyze --storage sqlite:///results/tracking.db --json results/tracking.json \
  --plots results/tracking --report results/tracking.html
echo
echo "Reports:        results/demo.html, results/tracking.html (open in a browser; JSON beside them)"
echo "Figures (PNG):  results/demo/, results/tracking/"
echo "Studies:        results/demo.db, results/tracking.db (l2bn status / l2bn analyze --storage ...)"
