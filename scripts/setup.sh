#!/usr/bin/env bash
# Idempotent setup: Debian packages the product and its tests need, then .venv.
# Quick on a second run: apt is only called when a package is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(
  # the product's runtime
  busybox-static squashfs-tools kmod cpio zstd ipxe pxelinux syslinux-common
  qemu-system-x86 qemu-utils ovmf mmdebstrap iproute2 nftables
  openssh-client  # ssh-keygen: per-node host keys and ramboot's SSH CA (the tests also log in with ssh)
  shim-signed grub-efi-amd64-signed sbsigntool  # Secure Boot: signed shim and GRUB, sbverify
  udev kpartx iputils-arping  # host tools that `--initramfs dracut` copies in
  tpm2-tools swtpm swtpm-tools  # TPM identity: the initramfs carries tpm2-tools; the lab and tests run swtpm
  systemd-boot-efi binutils  # measured UEFI boots: systemd-stub made into a UKI per image by objcopy (uki.py)
  # real peers for the tests and benchmarks
  isc-dhcp-client isc-dhcp-relay atftp tftp-hpa tftpd-hpa dnsmasq-base kea-admin kea-dhcp4-server kea-dhcp6-server
  tcpdump curl nginx-light chromium wrk
  postgresql  # several servers on one database; the tests initdb a throwaway cluster of their own
  e2fsprogs xorriso  # LiveOS ext4 images (mkfs.ext4 -d) and live ISOs for the live-media tests
  python3-venv  # make deb: the package's venv is made by Debian's own python3 (dpkg-deb is in dpkg)
  ipmitool openipmi  # power: `node console` over IPMI SOL; ipmi_sim is the tests' BMC (docs/power.md)
  libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu virtinst  # the libvirt driver's and Redfish tests' peer
  libvirt-dev pkg-config gcc python3-dev openssl  # libvirt-python builds against libvirt, mypyc's modules (setup.py); the lab BMC's certificate
)

missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  # Keep package maintainer scripts from starting daemons (tftpd-hpa, nginx,
  # kea) on the host's real ports: the tests start their own, in namespaces.
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if ((created_policy)); then rm -f /usr/sbin/policy-rc.d; fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.ramboot-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  touch "$stamp"
fi
# The hot paths compiled with mypyc (the list: src/ramboot/compiled.py), rebuilt in place when a
# source changed since its build: ramboot would otherwise run that source, and warn.
# RAMBOOT_NO_MYPYC=1: no compiled modules (and no C compiler needed).
if [ -z "${RAMBOOT_NO_MYPYC:-}" ] && ! .venv/bin/python -W ignore -c \
    'import sys, ramboot.compiled as c; sys.exit(bool(c.stale()) or not all(map(c.built, c.MODULES)))'; then
  echo "setup: compiling $(.venv/bin/python -W ignore -c 'import ramboot.compiled as c; print(len(c.MODULES))') modules with mypyc"
  PYTHONWARNINGS=ignore .venv/bin/python setup.py -q build_ext --inplace >/dev/null
fi
echo "setup: ok"
