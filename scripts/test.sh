#!/usr/bin/env bash
# Set up (see setup.sh) and run the tests. With no arguments: the fast tests (about 3 min on 2
# cores), then a line saying how to run the slow ones; arguments go to pytest instead, e.g.
#   scripts/test.sh -m slow            # the slow tests alone (about 20 min)
#   scripts/test.sh tests/analysis     # one folder, fast and slow
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
# PostgreSQL tests skip themselves when no server answers; start the local one if it is there.
if command -v pg_ctlcluster >/dev/null && ! pg_isready -q -h 127.0.0.1 2>/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start 2>/dev/null || true
fi
if [ "$#" -eq 0 ]; then
  python -m pytest -m "not slow"
  echo "Fast tests passed. The slow ones (sweeps under kill -9, the tracking toy end to end,"
  echo "the calibration subset): scripts/test.sh -m slow"
else
  exec python -m pytest "$@"
fi
