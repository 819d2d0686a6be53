#!/usr/bin/env bash
# `make demo`: build the default image, bring the lab up, PXE-boot one blank BIOS VM
# into its RAM root with its console on screen, print the boot timeline, tear down.
set -euo pipefail
cd "$(dirname "$0")/.."

RAMBOOT=.venv/bin/ramboot
export RAMBOOT_LAB_DIR=${RAMBOOT_LAB_DIR:-/var/lib/ramboot-lab}
FIRMWARE=${FIRMWARE:-bios}

if [ "$(id -u)" -ne 0 ]; then
  echo "demo: needs root (network namespaces, taps); run: sudo make demo" >&2
  exit 1
fi

trap '"$RAMBOOT" lab down' EXIT INT TERM

echo "==> building the default image (kernel, ramboot initramfs, busybox root) into $RAMBOOT_LAB_DIR/data"
"$RAMBOOT" image build demo --data-dir "$RAMBOOT_LAB_DIR/data"

echo "==> bringing the lab up (namespace ramboot-lab, bridge rb0, server 172.22.33.2)"
"$RAMBOOT" lab up

echo "==> PXE-booting a blank $FIRMWARE VM (serial console below)"
"$RAMBOOT" lab vm --firmware "$FIRMWARE" --timeout "${TIMEOUT:-300}"
