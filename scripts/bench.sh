#!/usr/bin/env bash
# `make bench`: every benchmark in bench/, each side by side with its peer, then
# the boot storm. Not part of `make test`. Needs root (network namespaces).
#
#   BENCH_ONLY="dhcp http"  run only these (dhcp dhcp-sweep dhcp6 tftp http storm workers seed e2e debian bigroot;
#                           bigroot, a 1 GiB root in a 2 GiB VM, about 7 min, runs only when named)
#   BENCH_QUICK=1           shorter points (for a smoke run; figures are noisier)
#
# Each benchmark's full output goes to test-artifacts/bench/NAME.txt (and .json
# where it writes one); the tables are printed as they come.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=test-artifacts/bench
mkdir -p "$OUT"
ONLY=${BENCH_ONLY:-dhcp dhcp-sweep dhcp6 tftp http storm workers seed e2e debian}
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
  # Kea and ramboot side by side at fixed rates, alternating, 3 rounds (issue 14's goals).
  if ((QUICK)); then a="--rates 2000,4000 --rounds 1 --duration 3"; else a="--rates 1000,2000,3000,4000,5000 --rounds 3"; fi
  bench dhcp $PY bench/dhcp_perfdhcp.py $a --json "$OUT/dhcp.json"
fi
if want dhcp6; then
  # kea-dhcp6 and ramboot's DHCPv6 side by side at fixed rates, alternating (issue 19).
  if ((QUICK)); then a="--rates 1000 --rounds 1 --duration 3"; else a="--rates 500,1000,2000,3000,4000 --rounds 3"; fi
  bench dhcp6 $PY bench/dhcp6_bench.py $a --json "$OUT/dhcp6.json"
fi

if want dhcp-sweep; then
  # the whole ladder, dnsmasq included
  if ((QUICK)); then d=3; else d=10; fi
  bench dhcp-sweep $PY bench/dhcp_bench.py --duration $d --json "$OUT/dhcp-sweep.json"
fi
if want tftp && [ -f bench/tftp_bench.py ]; then
  # over a veth pair between two namespaces (--net veth, the default); "ramboot" is the whole
  # `ramboot serve` (DHCP off), "ramboot-bare" start_tftp alone in the bench script
  if ((QUICK)); then a="--size-mb 10 --repeat 1 --concurrent 10"; else a="--size-mb 40 --repeat 7 --servers tftpd-hpa,dnsmasq,ramboot,ramboot-bare"; fi
  bench tftp $PY bench/tftp_bench.py $a
fi
if want http; then
  if ((QUICK)); then d=3; r=1; else d=10; r=2; fi
  bench http $PY bench/http_bench.py --duration $d --rounds $r --servers nginx,ramboot,ramboot+seed --json "$OUT/http.json"
fi
if want storm; then
  # The scale curve (p50/p99, server and generator CPU against N at 8 MB), and one large image
  # (200 x 256 MB, 60 GB) as its own point and panel; docs/storm-curve.png is this plot from the final run.
  if ((QUICK)); then c="100,300"; l="50x64"; else c="100,300,1000,3000"; l="200x256"; fi
  bench storm-curve $PY bench/storm_curve.py --clients "$c" --image-mb 8 --large "$l" \
    --json "$OUT/storm-curve.json" --png "$OUT/storm-curve.png"
fi
if want workers; then
  # `[serve] workers` 1 and 2 side by side in one run (issue 26): the storm's p99 ratio, and the
  # API's and status page's p99 during it (bench/storm/apiprobe.py).
  if ((QUICK)); then c=300; else c=3000; fi
  bench storm-workers $PY -m bench.storm -n $c --image-mb 8 --serve-workers 1,2 --json "$OUT/storm-workers.json"
fi
if want seed; then
  # Booted nodes seeding their peers (issue 20): N nodes on a 64 MB image behind a 1 Gbit/s
  # server link (tc tbf), seeding off and on; docs/seed-curve.png is this plot from the final run.
  if ((QUICK)); then c="100,300"; else c="100,300,1000"; fi
  bench seed-curve $PY bench/seed_curve.py --clients "$c" --image-mb 64 --link-mbit 1000 \
    --json "$OUT/seed-curve.json" --png "$OUT/seed-curve.png"
fi
if want e2e && [ -f bench/e2e_bench.py ]; then
  if ((QUICK)); then r=1; else r=2; fi
  bench e2e $PY bench/e2e_bench.py --runs $r --json "$OUT/e2e.json"
fi
if want bigroot; then
  if ((QUICK)); then a="--size-mib 256 --memory-mb 768"; else a=""; fi
  bench bigroot $PY bench/bigroot_bench.py $a --json "$OUT/bigroot.json"
fi
if want debian && [ -f bench/debian_bench.py ]; then
  # a Debian root with systemd: power-on to sshd, ramboot against the seed's stack
  if ((QUICK)); then r=1; else r=2; fi
  bench debian $PY bench/debian_bench.py --runs $r --json "$OUT/debian.json"
fi

echo
echo "bench: load $(cut -d' ' -f1-3 /proc/loadavg) at the end; outputs in $OUT/"
if ((${#failed[@]})); then
  echo "bench: FAILED: ${failed[*]}"
  exit 1
fi
