#!/usr/bin/env bash
# Create .venv and install l2bn with its dev and postgres extras. Idempotent and quick when
# nothing changed. torch is installed first, pinned: a looser range on a machine without torch
# would pull several GB of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
stamp=.venv/.l2bn-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  python -c "import torch" 2>/dev/null || pip install -q "torch==${L2BN_TORCH_VERSION:-2.13.0}"
  # Keep the torch that is there: one below pyproject.toml's floor stops here, not a download.
  torch=$(python -c "from importlib.metadata import version; print(version('torch'))")
  pip install -q -e ".[dev,postgres]" "torch==$torch" || {
    echo "setup.sh: could not install l2bn keeping torch $torch (pyproject.toml wants" \
      "$(grep -o '"torch[<>=~!][^"]*"' pyproject.toml)); remove .venv and run me again" \
      "(L2BN_TORCH_VERSION picks the torch a new .venv gets)" >&2
    exit 1
  }
  echo "$want" > "$stamp"
fi
