#!/usr/bin/env bash
# `make soak`: SOAK_MINUTES (default 30) of storms, API writes and SSE clients against one
# `ramboot serve` in a namespace; fails unless memory, fds and tasks stayed flat.
# Writes docs/soak.csv and docs/soak.png (SOAK_OUT to change where) and test-artifacts/soak.log.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p test-artifacts
.venv/bin/python -c 'import matplotlib' 2>/dev/null || .venv/bin/pip install -q matplotlib
exec .venv/bin/python bench/soak.py --minutes "${SOAK_MINUTES:-30}" --out "${SOAK_OUT:-docs}" "$@" 2>&1 \
  | tee test-artifacts/soak.log
