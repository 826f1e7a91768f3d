#!/usr/bin/env bash
# Regenerate the numbers and figures of REPRODUCTION.md: the sweeps/cpu.toml grid on the real
# CIFAR-10 subset (≈ 70 min on 2 cores), then `l2bn analyze` into docs/reproduction/.
#   bash scripts/reproduce_cpu.sh            # resumes an interrupted run (same database)
#   L2BN_FRESH=1 bash scripts/reproduce_cpu.sh   # start over: deletes repro/cpu.db first
# Data: $L2BN_DATA, else ../shared/data/cifar-10-batches-py (the python-batches layout).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export L2BN_DATA=${L2BN_DATA:-../shared/data/cifar-10-batches-py}
work=${L2BN_REPRO_DIR:-repro}
out=docs/reproduction
mkdir -p "$work" "$out"
[ "${L2BN_FRESH:-0}" = 1 ] && rm -f "$work/cpu.db"
db="sqlite:///$work/cpu.db"
export COLUMNS=${COLUMNS:-120}  # rich tables at a fixed width in the saved text

start=$(date +%s)
# 2 workers × 1 torch thread: 1.5× the throughput of one 2-thread worker on this small net.
.venv/bin/l2bn sweep sweeps/cpu.toml --storage "$db" --workers 2 --threads 1
echo "sweep wall time: $(( $(date +%s) - start )) s" | tee "$out/wall_time.txt"

# Analysis settings are the defaults, fixed before the run: η* by a parabola in log η through
# the seed-averaged validation minimum, k's 95 % CI = wider of a 1000-resample seed bootstrap
# and the OLS t-interval, verdict margin 0.05, norm fits on cells with η·λ·T ≥ 5.
.venv/bin/l2bn analyze --storage "$db" --json "$out/analysis.json" --csv "$out/trials.csv" \
  --plots "$out" | tee "$out/analyze.txt"
