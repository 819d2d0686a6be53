#!/usr/bin/env bash
# `make bench`: every benchmark in bench/, each side by side with its peer, then
# the boot storm. Not part of `make test`. Needs root (network namespaces).
#
#   BENCH_ONLY="dhcp http"  run only these (dhcp tftp http storm e2e bigroot; bigroot,
#                           a 1 GiB root in a 2 GiB VM, about 7 min, runs only when named)
#   BENCH_QUICK=1           shorter points (for a smoke run; figures are noisier)
#
# Each benchmark's full output goes to test-artifacts/bench/NAME.txt (and .json
# where it writes one); the tables are printed as they come.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=test-artifacts/bench
mkdir -p "$OUT"
ONLY=${BENCH_ONLY:-dhcp tftp http storm e2e}
QUICK=${BENCH_QUICK:-0}
failed=()

want() { [[ " $ONLY " == *" $1 "* ]]; }

bench() {  # name, command...
  local name=$1; shift
  echo "=== bench: $name: $*"
  local t0=$SECONDS
  if "$@" 2>&1 | tee "$OUT/$name.txt"; then
    echo "=== bench: $name done in $((SECONDS - t0)) s"
  else
    echo "=== bench: $name FAILED (see $OUT/$name.txt)"
    failed+=("$name")
  fi
}

echo "bench: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg) at start; figures are noisy when other jobs run"

if want dhcp; then
  if ((QUICK)); then d=3; else d=10; fi
  bench dhcp $PY bench/dhcp_bench.py --duration $d --json "$OUT/dhcp.json"
fi
if want tftp && [ -f bench/tftp_bench.py ]; then
  if ((QUICK)); then a="--size-mb 10 --repeat 1 --concurrent 10"; else a=""; fi
  bench tftp $PY bench/tftp_bench.py $a
fi
if want http; then
  if ((QUICK)); then d=3; r=1; else d=10; r=2; fi
  bench http $PY bench/http_bench.py --duration $d --rounds $r --json "$OUT/http.json"
fi
if want storm; then
  # clients:image MB. 1,000 x 64 MB would move 76 GB through one generator pair: 64 MB runs at 100.
  if ((QUICK)); then points="100:8"; else points="100:8 500:8 1000:8 100:64"; fi
  for pt in $points; do
    n=${pt%%:*} size=${pt##*:}
    bench "storm-n$n-${size}m" $PY -m ramboot.bench storm -n "$n" --image-mb "$size" --json "$OUT/storm-n$n-${size}m.json"
  done
fi
if want e2e && [ -f bench/e2e_bench.py ]; then
  if ((QUICK)); then r=1; else r=2; fi
  bench e2e $PY bench/e2e_bench.py --runs $r --json "$OUT/e2e.json"
fi
if want bigroot; then
  if ((QUICK)); then a="--size-mib 256 --memory-mb 768"; else a=""; fi
  bench bigroot $PY bench/bigroot_bench.py $a --json "$OUT/bigroot.json"
fi

echo
echo "bench: load $(cut -d' ' -f1-3 /proc/loadavg) at the end; outputs in $OUT/"
if ((${#failed[@]})); then
  echo "bench: FAILED: ${failed[*]}"
  exit 1
fi
