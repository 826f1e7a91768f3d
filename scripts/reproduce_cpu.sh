#!/usr/bin/env bash
# Regenerate the numbers and figures of REPRODUCTION.md: one sweep on the real CIFAR-10 subset,
# then `l2bn analyze` into docs/reproduction/<name>/. The runs are data, not code:
#   bash scripts/reproduce_cpu.sh                # run 1: sweeps/cpu.toml (≈ 70 min on 2 cores)
#   bash scripts/reproduce_cpu.sh cpu-long       # run 2: sweeps/cpu-long.toml (≈ 70 min)
#   bash scripts/reproduce_cpu.sh cpu-noaffine   # run 3: sweeps/cpu-noaffine.toml (≈ 50 min)
#   bash scripts/reproduce_cpu.sh cpu-adam       # run 4: sweeps/cpu-adam.toml (≈ 90 min)
#   bash scripts/reproduce_cpu.sh cpu-200ep      # run 5: sweeps/cpu-200ep.toml (≈ 35 min)
#   bash scripts/reproduce_cpu.sh cpu-adam-noaffine  # run 6 (fp32): ≈ 2.5 h on an AVX2-only CPU
#   bash scripts/reproduce_cpu.sh symmetry       # the exact symmetry control (≈ 7 min), and
#   bash scripts/reproduce_cpu.sh symmetry --set scale_eps=false --set name=symmetry-pytorch-eps
#   bash scripts/reproduce_cpu.sh metric-noise   # error vs loss as the objective (≈ 15 min)
#   bash scripts/reproduce_cpu.sh headline [nesterov|adam|adamw]  # the headline, one part per
#       optimizer (≈ 50 min each), outputs in docs/reproduction/headline/<optimizer>/, then
#       the registered reading rule over the parts done (headline/summary.md, k.png)
#   bash scripts/reproduce_cpu.sh headline2 [nesterov|adam|adamw]  # headline v2 (≈ 1.8 h a
#       part), then analyze over every committed part with the file's [registration]
#   bash scripts/reproduce_cpu.sh headline2-paper [nesterov|adam]  # the paper's setting (≈ 1.1 h)
# Times are for the AVX512-BF16 CPU of runs 1–5 (bf16 runs). On a CPU without bf16 dot
# products (AVX2 only) bf16 is emulated, ≈ 8× slower than fp32: arguments after the name go to
# `l2bn sweep`, so `bash scripts/reproduce_cpu.sh cpu-long --set precision=fp32` runs it in fp32.
#   L2BN_FRESH=1 bash scripts/reproduce_cpu.sh   # start over: deletes repro/<name>.db first
# An interrupted run resumes from its database. Data: $L2BN_DATA, else
# ../shared/data/cifar-10-batches-py (the python-batches layout).
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:-cpu}
shift || true  # the rest: extra `l2bn sweep` options
sweep=sweeps/$name.toml
if [ ! -f "$sweep" ]; then
  runs=$(cd sweeps && ls cpu*.toml | sed 's/\.toml$//' | paste -sd, - | sed 's/,/, /g')
  echo "reproduce_cpu.sh: no $sweep (try: $runs)" >&2
  exit 2
fi
bash scripts/setup.sh
export L2BN_DATA=${L2BN_DATA:-../shared/data/cifar-10-batches-py}
work=${L2BN_REPRO_DIR:-repro}
# A --set name=… among the extra options names the study, its database and its outputs.
for arg in "$@"; do
  case $arg in name=*) name=${arg#name=} ;; esac
done
out=docs/reproduction/$name
mkdir -p "$work" "$out"
[ "${L2BN_FRESH:-0}" = 1 ] && rm -f "$work/$name.db"
db="sqlite:///$work/$name.db"
export COLUMNS=${COLUMNS:-120}  # rich tables at a fixed width in the saved text

case $name in headline | headline2 | headline2-paper)
  # Parts, one optimizer each, so that each finishes within a session; the rest of the
  # arguments name the parts (default: every optimizer of the file in turn).
  parts=("$@")
  if [ ${#parts[@]} -eq 0 ]; then
    parts=(nesterov adam)
    [ "$name" = headline2-paper ] || parts+=(adamw)
  fi
  for opt in "${parts[@]}"; do
    part=$out/$opt
    mkdir -p "$part"
    start=$(date +%s)
    .venv/bin/l2bn sweep "$sweep" --optimizer "$opt" --storage "$db" --workers 2 --threads 1
    echo "sweep wall time: $(( $(date +%s) - start )) s" | tee "$part/wall_time.txt"
    # The registered analyses (the sweep file's comment): defaults, then --metric val_loss.
    .venv/bin/l2bn analyze --storage "$db" --study "$name/$opt" --json "$part/analysis.json" \
      --csv "$part/trials.csv" --plots "$part" --report "$part/report.html" | tee "$part/analyze.txt"
    .venv/bin/l2bn analyze --storage "$db" --study "$name/$opt" --metric val_loss \
      --json "$part/analysis-val_loss.json" > "$part/analyze-val_loss.txt"
  done
  if [ "$name" = headline ]; then
    # The first headline's registered reading rule over the parts run so far.
    .venv/bin/python scripts/headline_summary.py "$out"
  else
    # Every committed part together (a part's database may be gone with its machine), the
    # reading rule of the file's [registration] evaluated by analyze itself.
    csvs=()
    for f in "$out"/*/trials.csv; do csvs+=(--from-csv "$f"); done
    .venv/bin/l2bn analyze "${csvs[@]}" --registration "$sweep" --json "$out/analysis.json" \
      --plots "$out" --report "$out/report.html" | tee "$out/analyze.txt"
  fi
  exit 0
  ;;
esac

start=$(date +%s)
# 2 workers × 1 torch thread: 1.5× the throughput of one 2-thread worker on this small net.
.venv/bin/l2bn sweep "$sweep" --storage "$db" --workers 2 --threads 1 "$@"
echo "sweep wall time: $(( $(date +%s) - start )) s" | tee "$out/wall_time.txt"

# Analysis settings are the defaults, fixed before the runs: η* by a parabola in log η through
# the seed-averaged validation minimum, k's 95 % CI = wider of a 1000-resample seed bootstrap
# and the OLS t-interval, verdict margin 0.05, norm fits on cells with c·η·λ·T ≥ 5.
.venv/bin/l2bn analyze --storage "$db" --json "$out/analysis.json" --csv "$out/trials.csv" \
  --plots "$out" | tee "$out/analyze.txt"
# The summary over the reproduction runs (not the controls): a table of k and k_summary.png.
.venv/bin/python scripts/k_summary.py docs/reproduction/k_summary.png docs/reproduction/cpu*/analysis.json
