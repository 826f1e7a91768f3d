#!/usr/bin/env bash
# Set up (see setup.sh) and run the test suite. Extra arguments go to pytest,
# e.g. scripts/test.sh -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate
# PostgreSQL tests skip themselves when no server answers; start the local one if it is there.
if command -v pg_ctlcluster >/dev/null && ! pg_isready -q -h 127.0.0.1 2>/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start 2>/dev/null || true
fi
exec python -m pytest "$@"
