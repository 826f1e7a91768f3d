#!/usr/bin/env bash
# The GPU check: what l2bn says about GPUs that a CPU cannot test, measured in one go on a GPU
# node (≈ 5 min on one H100 with the 5170-image CIFAR-10 subset; each step has a time limit):
#   1. the CUDA tests: pytest -m "gpu and not slow" over the test files that have any;
#   2. benchmarks/bench_step.py --device cuda --k 1 16: l2bn's step at K = 1 and K = 16 against
#      a naive PyTorch loop, interleaved on the same GPU in one process, each eager and as one
#      CUDA graph (the default on CUDA), and the graph's speed-up over eager per K;
#   3. a fused smoke sweep: `l2bn sweep --fuse 16`, 32 points × 2 epochs on the real data;
#   4. the symmetry control (sweeps/symmetry.toml, seed 0 only) with --set device=cpu:
#      its rows are bitwise copies only on a CPU (cuDNN's kernels are not bitwise repeatable),
#      and every λ row must give the λ_ref row's numbers exactly;
#   5. peak GPU memory per worker: one fused sweep round (K = 16, the paper's width 32, one
#      epoch) and one run alone, torch.cuda.max_memory_allocated and max_memory_reserved.
# It prints a markdown table and writes it, with each step's output, to the file given
# (default: docs/reproduction/gpu-check/<GPU name>.md), to be committed. Exit 0 when every
# check passed, 1 when one failed (the table says which), 2 when no GPU is visible (one line).
#   scripts/gpu_check.sh [OUT.md]
# Python: $PYTHON, else .venv/bin/python, else python3 (the Docker image's). The code checked
# is this checkout's (PYTHONPATH). Data: $L2BN_DATA, else ../shared/data; either the folder
# holding cifar-10-batches-py/ or that folder itself. In the Docker image, with this checkout
# mounted (docs/deployment.md):
#   docker run --rm --gpus all -v "$PWD:/src" -v "$PWD/data:/data" -w /src --entrypoint bash \
#       l2bn scripts/gpu_check.sh
set -uo pipefail  # not -e: a failed check is recorded in the table, and the rest still run
cd "$(dirname "$0")/.."
if [ "$#" -gt 1 ]; then
  echo "usage: scripts/gpu_check.sh [OUT.md]" >&2
  exit 2
fi
repo=$PWD
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=python3
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

# No GPU: one line, exit 2, before anything is written.
probe=$("$PY" - 2>/dev/null <<'EOF'
try:
    import torch
except Exception as e:
    print(f"cannot import torch ({type(e).__name__})")
    raise SystemExit(3)
if not torch.cuda.is_available():
    build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    print(f"torch {torch.__version__}, {build}")
    raise SystemExit(4)
print(torch.cuda.get_device_name(0))
EOF
)
case $? in
  0) gpu=$probe ;;
  4) echo "gpu_check.sh: no GPU is visible to torch ($probe; check nvidia-smi and the driver)" >&2
     exit 2 ;;
  *) echo "gpu_check.sh: no GPU is visible: $PY ${probe:-failed to start}" >&2
     exit 2 ;;
esac

slug=$(printf '%s' "$gpu" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/^-*//; s/-*$//')
out=${1:-docs/reproduction/gpu-check/$slug.md}
mkdir -p "$(dirname "$out")" || exit 2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

data=${L2BN_DATA:-../shared/data}
[ -f "$data/test_batch" ] && data=$(dirname "$data")  # the batches folder itself was given
data=$(cd "$data" 2>/dev/null && pwd) || data=${L2BN_DATA:-../shared/data}
have_data=0
[ -f "$data/cifar-10-batches-py/test_batch" ] && have_data=1
export L2BN_DATA=$data

rows=()
failed=0
outputs="$tmp/outputs.md"
: > "$outputs"

# step NAME LIMIT_S COMMAND...: runs it with its output in $tmp/NAME.log; sets rc and secs.
step() {
  local name=$1 limit=$2
  shift 2
  local start
  start=$(date +%s)
  timeout "$limit" "$@" > "$tmp/$name.log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  [ "$rc" -eq 124 ] && echo "(stopped after the step's limit of $limit s)" >> "$tmp/$name.log"
}

# row CHECK OK RESULT SECONDS LOG [LOG...]: a table row, and the logs' tails under the table.
row() {
  local check=$1 ok=$2 result=$3 secs=$4
  shift 4
  if [ "$ok" = 1 ]; then
    mark="pass"
  else
    mark="**FAIL**"
    failed=$((failed + 1))
  fi
  rows+=("| $check | $mark | $result | $secs s |")
  {
    echo "### $check"
    echo
    echo '```text'
    for log in "$@"; do tail -n 40 "$log"; done
    echo '```'
    echo
  } >> "$outputs"
}

no_data="not run: no CIFAR-10 under $data (set L2BN_DATA)"

# 1. The CUDA tests: the files with a test marked gpu (it skips itself without CUDA).
files=$(grep -rl --include='test_*.py' 'mark.gpu' tests | sort)
if ! "$PY" -c 'import pytest' 2>/dev/null; then
  # The Docker image has no dev extra: pytest goes to a temporary folder, not the image.
  "$PY" -m pip install -q --target "$tmp/pylib" pytest > "$tmp/pip.log" 2>&1 \
    && export PYTHONPATH="$PYTHONPATH:$tmp/pylib"
fi
if [ -z "$files" ]; then
  row "CUDA tests" 0 "no test file has a test marked gpu" 0 /dev/null
elif ! "$PY" -c 'import pytest' 2>/dev/null; then
  row "CUDA tests" 0 "not run: no pytest, and pip could not install it" 0 "$tmp/pip.log"
else
  # shellcheck disable=SC2086  # the file names are words without spaces (tests/…/test_*.py)
  step tests 150 "$PY" -m pytest -m "gpu and not slow" -q -s -p no:cacheprovider $files
  summary=$(grep -E 'passed|failed|error|skipped|deselected|no tests ran' "$tmp/tests.log" \
    | tail -n 1 | tr -d '=' | sed 's/^ *//; s/ *$//')
  memory=$(grep -o 'beyond the output: .*' "$tmp/tests.log" | head -n 1)
  ok=0
  # On a GPU node a CUDA test that skipped is a failure too: torch saw no GPU under pytest.
  [ "$rc" -eq 0 ] && [[ $summary == *passed* ]] && [[ $summary != *skipped* ]] && ok=1
  row "CUDA tests (\`pytest -m \"gpu and not slow\"\`)" "$ok" \
    "${summary:-no summary (exit $rc)}${memory:+; augmentation, 50 000 images, $memory}" \
    "$secs" "$tmp/tests.log"
fi

# 2. bench_step at K = 1 and K = 16 against the naive loop, same GPU, same rounds.
if [ "$have_data" = 1 ]; then
  step bench 240 "$PY" benchmarks/bench_step.py --device cuda --k 1 16 --seconds 60 \
    --data-dir "$data"
  # "  NAME  median X ms/step  min Y  xR[  (Z ms per model-step)]" → "NAME X ms ×R"
  lines=$(sed -nE 's/^  (.*[^ ]) +median +([0-9.]+) ms\/step .* x([0-9.]+).*/\1: \2 ms ×\3/p' \
    "$tmp/bench.log")
  one=$(printf '%s\n' "$lines" | grep -v 'K=' | paste -sd ';' - | sed 's/;/; /g')
  many=$(printf '%s\n' "$lines" | grep 'K=16' | paste -sd ';' - | sed 's/;/; /g')
  ok=0
  [ "$rc" -eq 0 ] && [ -n "$many" ] && ok=1
  row "bench_step K = 1 vs naive (ms/step, ×: throughput ÷ naive)" "$ok" "${one:-no result}" \
    "$secs" "$tmp/bench.log"
  rows+=("| bench_step K = 16 vs naive (× per model-step) | same run | ${many:-no result} | |")
  graph=$(sed -n 's/^step graph ÷ eager (eager ms ÷ graph ms): //p' "$tmp/bench.log")
  rows+=("| bench_step: step graph ÷ eager (eager ms ÷ graph ms) | same run | ${graph:-no result} | |")
else
  row "bench_step K = 1 and 16 vs naive" 0 "$no_data" 0 /dev/null
fi

# 3. A fused smoke sweep: 32 points, 2 rounds of --fuse 16, 2 epochs, on the GPU.
cat > "$tmp/gpu-smoke.toml" <<'EOF'
name = "gpu-smoke"
dataset = "cifar10"
epochs = 2
width = 32
lr = [0.0125, 0.025, 0.05, 0.1]
weight_decay = [5e-5, 2e-4, 5e-4, 2e-3]
seeds = [0, 1]

[optimizers.nesterov]
EOF
if [ "$have_data" = 1 ]; then
  step smoke 150 "$PY" -m l2bn sweep "$tmp/gpu-smoke.toml" --fuse 16 --workers 1 \
    --storage "sqlite:///$tmp/smoke.db"
  smoke_rc=$rc smoke_secs=$secs
  cat > "$tmp/smoke_read.py" <<'EOF'
import sys

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name="gpu-smoke/nesterov", storage=sys.argv[1])
done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
# A trial failed and retried adds a trial but not a point: count the points done.
points = {(t.params["lr"], t.params["weight_decay"], t.params["seed"]) for t in done}
devices = sorted({str(t.user_attrs.get("device")) for t in done})
precisions = sorted({str(t.user_attrs.get("precision")) for t in done})
errors = [t.value for t in done if t.value is not None]
span = f"{min(errors):.3f}–{max(errors):.3f}" if errors else "–"
print(f"{len(points)}/32 points complete ({len(study.trials)} trials), device "
      f"{', '.join(devices)}, precision {', '.join(precisions)}, val error {span}")
ok = len(points) == 32 and bool(devices) and all(d.startswith("cuda") for d in devices)
raise SystemExit(0 if ok else 1)
EOF
  step smoke-read 60 "$PY" "$tmp/smoke_read.py" "sqlite:///$tmp/smoke.db"
  ok=0
  [ "$smoke_rc" -eq 0 ] && [ "$rc" -eq 0 ] && ok=1
  row "fused smoke sweep (\`--fuse 16\`, 32 points × 2 epochs, nesterov, width 32)" "$ok" \
    "$(tail -n 1 "$tmp/smoke-read.log")" "$smoke_secs" "$tmp/smoke.log" "$tmp/smoke-read.log"
else
  row "fused smoke sweep" 0 "$no_data" 0 /dev/null
fi

# 4. The symmetry control on the CPU: every λ row a bitwise copy of the λ_ref row.
if [ "$have_data" = 1 ]; then
  workers=$(nproc)
  [ "$workers" -gt 16 ] && workers=16
  step symmetry 300 "$PY" -m l2bn sweep sweeps/symmetry.toml --set device=cpu \
    --set 'seeds=[0]' --workers "$workers" --threads 1 \
    --storage "sqlite:///$tmp/symmetry.db"
  sym_rc=$rc sym_secs=$secs
  cat > "$tmp/symmetry_read.py" <<'EOF'
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

folder = Path(sys.argv[1])
rows = defaultdict(lambda: defaultdict(list))  # (optimizer, seed) → λ → its trials
for r in csv.DictReader((folder / "symmetry.csv").open()):
    rows[r["optimizer"], r["seed"]][float(r["weight_decay"])].append(r)
cells = same = 0
complete = bool(rows)
for by_wd in rows.values():
    runs = [sorted(rs, key=lambda r: float(r["lr"])) for _, rs in sorted(by_wd.items())]
    complete = complete and len(runs) == 3 and len({len(rs) for rs in runs}) == 1
    for i in range(min(len(rs) for rs in runs)):  # the i-th η of every row: copies
        cells += 1
        same += len({(rs[i]["val_error"], rs[i]["train_loss"]) for rs in runs}) == 1
ks = []
ok = complete and cells > 0 and same == cells
for g in json.loads((folder / "symmetry.json").read_text())["groups"]:
    k, theory = g["k"]["estimate"]["value"], g["k"]["theory"]
    exact = k is not None and abs(k - theory) < 1e-9  # the committed full run: 1e-14
    ks.append(f"{g['optimizer']} {'–' if k is None else f'{k:.15g}'} ({theory:g})")
    ok = ok and exact
print(f"{same}/{cells} η columns identical in every λ row (val error and train loss)"
      f"{'' if complete else ', the grid incomplete'}; k (theory): {', '.join(ks)}")
raise SystemExit(0 if ok else 1)
EOF
  step symmetry-read 120 bash -c '"$0" -m l2bn analyze --storage "$1" --json "$2/symmetry.json" \
      --csv "$2/symmetry.csv" && "$0" "$2/symmetry_read.py" "$2"' \
    "$PY" "sqlite:///$tmp/symmetry.db" "$tmp"
  ok=0
  [ "$sym_rc" -eq 0 ] && [ "$rc" -eq 0 ] && ok=1
  row "symmetry control (CPU, fp32, seed 0: 72 runs × 4 epochs, $workers workers)" "$ok" \
    "$(tail -n 1 "$tmp/symmetry-read.log")" "$sym_secs" "$tmp/symmetry.log" \
    "$tmp/symmetry-read.log"
else
  row "symmetry control" 0 "$no_data" 0 /dev/null
fi

# 5. Peak GPU memory of one worker: a fused round of 16 and a run alone, one epoch each.
if [ "$have_data" = 1 ]; then
  cat > "$tmp/memory.py" <<'EOF'
import sys

import torch

from l2bn.train.config import TrainConfig
from l2bn.train.engine import train_many

k = int(sys.argv[1])
base = TrainConfig(dataset="cifar10", epochs=1, device="cuda", optimizer="nesterov", lr=0.05)
configs = [base.with_(lr=0.05 * 2 ** (i % 4 - 2), weight_decay=5e-4 * 2 ** (i // 4 - 2), seed=i)
           for i in range(k)]
result = train_many(configs)[0]
torch.cuda.synchronize()
gib = 2**30
print(f"K = {k}: allocated {torch.cuda.max_memory_allocated() / gib:.2f} GiB, reserved "
      f"{torch.cuda.max_memory_reserved() / gib:.2f} GiB ({result.precision}, width "
      f"{base.width}, batch {base.batch_size}, {result.seconds:.1f} s for the epoch)")
EOF
  step memory 120 bash -c '"$0" "$1" 16 && "$0" "$1" 1' "$PY" "$tmp/memory.py"
  ok=0
  [ "$rc" -eq 0 ] && ok=1
  row "peak GPU memory per worker (max allocated / reserved, one epoch)" "$ok" \
    "$(grep '^K = ' "$tmp/memory.log" | paste -sd ';' - | sed 's/;/; /g')" "$secs" \
    "$tmp/memory.log"
else
  row "peak GPU memory per worker" 0 "$no_data" 0 /dev/null
fi

# The table: the device named, then every check, then each step's output.
info=$("$PY" - <<'EOF'
import os

import torch

import l2bn

p = torch.cuda.get_device_properties(0)
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), l2bn {l2bn.__version__}, "
      f"{p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
      f"{os.cpu_count()} CPU cores")
EOF
)
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1)
commit=$(git rev-parse --short HEAD 2>/dev/null)
if [ -z "$commit" ] && [ -f .git/HEAD ]; then  # the image has no git: read the checkout's HEAD
  head=$(cat .git/HEAD)
  case $head in "ref: "*) head=$(cat ".git/${head#ref: }" 2>/dev/null) ;; esac
  commit=${head:0:9}
fi
{
  echo "# GPU check: $gpu"
  echo
  echo "\`scripts/gpu_check.sh\`, $(date -u '+%Y-%m-%d %H:%M UTC'), commit ${commit:-unknown}: $info," \
    "driver ${driver:-unknown}; data $data."
  echo
  echo "| check | verdict | result | time |"
  echo "|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  if [ "$failed" -eq 0 ]; then echo "Every check passed."; else echo "$failed check(s) failed."; fi
  echo
  echo "## Outputs (the last 40 lines of each)"
  echo
  cat "$outputs"
} > "$tmp/table.md"
cp "$tmp/table.md" "$out"
sed -n '1,/^## Outputs/p' "$tmp/table.md" | sed '$d'
echo "written: $out"
[ "$failed" -eq 0 ]
