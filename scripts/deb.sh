#!/usr/bin/env bash
# make deb: dist/ramboot_VERSION_amd64.deb for Debian 12, reproducibly.
#
# ramboot and its Python dependencies go into a virtual environment at
# /usr/lib/ramboot (Debian 12's pydantic and SQLAlchemy are too old), made by
# Debian's own python3 so that it links to the python3 the package depends on.
# The same tree and SOURCE_DATE_EPOCH give the same bytes: fixed mtimes, root
# owner, sorted tar members, hash-checked .pyc files.
#
# Environment: RAMBOOT_VERSION (default: pyproject.toml's version; the upgrade
# test builds N+1 from the same tree with it), DEB_OUT (default: dist),
# SOURCE_DATE_EPOCH (default: the last commit's time).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
PY=/usr/bin/python3
OUT=${DEB_OUT:-$SRC/dist}

fail() { echo "deb: $*" >&2; exit 1; }
for tool in dpkg-deb "$PY" gzip strip; do command -v "$tool" >/dev/null || fail "$tool: not installed (run: make setup)"; done

export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 1704067200)}
export TZ=UTC LC_ALL=C.UTF-8 PYTHONHASHSEED=0 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
umask 022

BASE_VERSION=$("$PY" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
VERSION=${RAMBOOT_VERSION:-$BASE_VERSION}
[[ $VERSION =~ ^[0-9][0-9A-Za-z.+~]*$ ]] || fail "RAMBOOT_VERSION $VERSION: not a version (digits first, then 0-9 A-Z a-z . + ~)"
PYMINOR=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
NEXTMINOR=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1] + 1}")')

work=$(mktemp -d /tmp/ramboot-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
venv=$root/usr/lib/ramboot

# The source as it is in the tree (uncommitted edits included), with the version to build.
mkdir -p "$work/tree"
cp -r pyproject.toml setup.py README.md src "$work/tree/"
find "$work/tree" -name __pycache__ -prune -exec rm -rf {} +
find "$work/tree" -name '*.so' -delete  # the tree's in-place mypyc build is for .venv's python; the package builds its own
rm -rf "$work/tree/src/"*.egg-info
sed -i "s/^version = \".*\"/version = \"$VERSION\"/" "$work/tree/pyproject.toml"

echo "deb: venv for ramboot $VERSION (python $PYMINOR)"; t0=$SECONDS
"$PY" -m venv "$venv"
# LDFLAGS: no build ID in the compiled modules, whose ID would hash the build directory's random path
LDFLAGS="${LDFLAGS:-} -Wl,--build-id=none" "$venv/bin/pip" install -q --no-compile "$work/tree" 2>&1 | grep -v "^WARNING: Location" >&2 || true
"$venv/bin/python" -c 'import ramboot.cli' || fail "ramboot does not import in the venv"
# pip built the hot paths with mypyc (setup.py, against Debian's python3-dev): the package ships them compiled.
"$venv/bin/python" -W error -c 'import sys, ramboot.compiled as c; sys.exit(not all(c.status().values()))' \
  || fail "the venv's ramboot runs its hot paths from source: $("$venv/bin/python" -c 'import ramboot.compiled as c; print(c.summary())')"
# The compiled modules without their debug sections, which hold the random build directory's path.
find "$venv/lib" \( -name 'ramboot__mypyc.*.so' -o -path '*/site-packages/ramboot/*.so' \) -exec strip --strip-debug {} +
"$venv/bin/pip" uninstall -q -y pip setuptools 2>&1 | grep -v "^WARNING: Location" >&2 || true
rm -f "$venv"/bin/activate* "$venv"/bin/pip* "$venv/bin/Activate.ps1"
# The venv must work at /usr/lib/ramboot, and not depend on where it was staged.
"$PY" packaging/relocate_venv.py "$venv" /usr/lib/ramboot
echo "deb: venv in $((SECONDS - t0)) s"
"$venv/bin/python" -m compileall -q -j1 --invalidation-mode unchecked-hash -s "$root" -p / "$venv/lib" >/dev/null

echo "deb: compiled in $((SECONDS - t0)) s"
# What the venv's ramboot generates: completion, man page, the placeholder config.
mkdir -p "$root/usr/bin" "$root/usr/share/bash-completion/completions" "$root/usr/share/man/man1" \
  "$root/etc/ramboot" "$root/lib/systemd/system" "$root/usr/lib/firewalld/services" "$root/usr/share/doc/ramboot"
ln -s ../lib/ramboot/bin/ramboot "$root/usr/bin/ramboot"
ramboot() { "$venv/bin/python" -c 'import sys; from ramboot.cli import main; main(prog_name="ramboot")' "$@"; }
_RAMBOOT_COMPLETE=bash_source ramboot > "$root/usr/share/bash-completion/completions/ramboot"
grep -q "complete " "$root/usr/share/bash-completion/completions/ramboot" || fail "click wrote no bash completion"
DATE=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)
"$venv/bin/python" packaging/manpage.py "$VERSION" "$DATE" | gzip -9n > "$root/usr/share/man/man1/ramboot.1.gz"
"$venv/bin/python" -c 'from ramboot.init_cli import PACKAGED_CONFIG; print(PACKAGED_CONFIG, end="")' \
  > "$root/etc/ramboot/ramboot.toml"

# The unit from deploy/, run from the package.
sed 's#^ExecStart=.*#ExecStart=/usr/bin/ramboot serve --config /etc/ramboot/ramboot.toml#' \
  deploy/ramboot.service > "$root/lib/systemd/system/ramboot.service"
grep -q '^ExecStart=/usr/bin/ramboot serve' "$root/lib/systemd/system/ramboot.service" || fail "deploy/ramboot.service has no ExecStart"
cp deploy/firewalld/ramboot.xml "$root/usr/lib/firewalld/services/ramboot.xml"
cp docs/install.md docs/config.md "$root/usr/share/doc/ramboot/"
cp packaging/copyright "$root/usr/share/doc/ramboot/copyright"
{
  echo "ramboot ($VERSION) bookworm; urgency=medium"
  echo
  echo "  * Built from the ramboot source tree (see the project's git log)."
  echo
  echo " -- ramboot maintainers <ramboot@localhost>  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n > "$root/usr/share/doc/ramboot/changelog.gz"

# Control files.
mkdir -p "$root/DEBIAN"
install -m 0755 packaging/postinst packaging/prerm packaging/postrm "$root/DEBIAN/"
echo /etc/ramboot/ramboot.toml > "$root/DEBIAN/conffiles"
size=$(find "$root" -path "$root/DEBIAN" -prune -o \( -type f -o -type l \) -printf '%s\n' \
  | awk '{ k += int(($1 + 1023) / 1024) } END { print k }')
DEPENDS="python3 (>= $PYMINOR), python3 (<< $NEXTMINOR), libc6, squashfs-tools, busybox-static, kmod, cpio, zstd, \
ipxe, pxelinux, syslinux-common, shim-signed, grub-efi-amd64-signed, openssh-client, iproute2, curl, \
tpm2-tools, openssl"
RECOMMENDS="qemu-system-x86, qemu-utils, ovmf, mmdebstrap, dracut, nftables, sbsigntool, udev, kpartx, \
iputils-arping, e2fsprogs, xorriso, swtpm, swtpm-tools"
cat > "$root/DEBIAN/control" <<EOF
Package: ramboot
Version: $VERSION
Architecture: amd64
Maintainer: ramboot maintainers <ramboot@localhost>
Installed-Size: $size
Depends: $DEPENDS
Recommends: $RECOMMENDS
Section: admin
Priority: optional
Description: boot diskless machines over the network into a root held in RAM
 ramboot answers DHCP (or proxyDHCP beside another DHCP server), TFTP and HTTP
 for PXE boots in one process, and builds the images the nodes boot: a kernel,
 an initramfs and a squashfs root copied into RAM.
 .
 Start with: ramboot init --interface IF; systemctl enable --now ramboot.
EOF

# Same bytes from the same tree: fixed modes and mtimes; dpkg-deb sorts members and
# takes its own timestamps from SOURCE_DATE_EPOCH; gzip (zlib) is deterministic and fast.
find "$root" -type d -exec chmod 0755 {} +
find "$root" -type f -perm /111 -exec chmod 0755 {} +
find "$root" -type f ! -perm /111 -exec chmod 0644 {} +
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
mkdir -p "$OUT"
deb="$OUT/ramboot_${VERSION}_amd64.deb"
dpkg-deb --root-owner-group -Zgzip -z6 --build "$root" "$deb" >/dev/null
echo "deb: $deb ($(du -h "$deb" | cut -f1))"
