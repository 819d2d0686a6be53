#!/usr/bin/env bash
# `make fuzz`: every fuzz target for RUNS inputs (default 1,000,000), one after the other.
# Not part of `make test`; tests/test_fuzz_regressions.py replays the seeds and past crashes there.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-1000000}
.venv/bin/python -c 'import atheris' 2>/dev/null || .venv/bin/pip install -q 'atheris>=2.3'
mkdir -p test-artifacts/fuzz
# atheris guides by the coverage of Python code: the mypyc-compiled modules run from their source
# here (the compiled ones are replayed against the seeds and crashes in `make test`).
export RAMBOOT_PURE_PYTHON=${RAMBOOT_PURE_PYTHON:-1}
for t in ${TARGETS:-dhcp_codec dhcp_core tftp http_range tar_layer config}; do
  start=$(date +%s)
  echo "fuzz: $t, $RUNS inputs"
  .venv/bin/python fuzz/run.py "$t" -runs="$RUNS" -print_final_stats=1 > "test-artifacts/fuzz/$t.log" 2>&1 || {
    echo "fuzz: $t FOUND A CRASH: see test-artifacts/fuzz/$t.log and fuzz/crashes/$t/" >&2; exit 1; }
  echo "fuzz: $t done in $(( $(date +%s) - start )) s: $(grep -m1 -o 'stat::number_of_executed_units: [0-9]*' "test-artifacts/fuzz/$t.log")"
done
