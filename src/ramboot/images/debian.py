"""`debian:SUITE[:pkg,...]`: a Debian root bootstrapped with mmdebstrap.

The mirror is whatever the host's apt already uses (read from /etc/apt), so a
site mirror or proxy applies and no host name is baked into ramboot. The root
gets what a diskless node needs: systemd as init, systemd-networkd doing DHCP
on every Ethernet NIC, a root shell on the console (the RAM root is a lab and
debugging tool; log in over ssh with keys you add), the `booted` report, and
fresh ssh host keys made at each boot when openssh-server is asked for and the
server sent none. Disk-only generators and units are off: the root is RAM.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from rich.console import Console

from .errors import ImageError

# kmod: `modprobe` on the node (the kernel's modules come as a layer, docs/images.md).
# dbus: systemd-logind starts only with a bus, and logind is what turns the power button
# (a BMC's soft power-off, the lab's `lab vm --stop`) into a clean shutdown.
BASE_PACKAGES = ["systemd-sysv", "udev", "kmod", "iproute2", "netbase", "ca-certificates", "procps", "less",
                 "dbus"]
SSH_PACKAGES = {"ssh", "openssh-server"}
NO_SECURITY = {"sid", "unstable", "experimental", "rc-buggy"}

NETWORK = """\
# ramboot: DHCP on every Ethernet NIC (the initramfs already has the boot NIC up).
[Match]
Type=ether

[Network]
DHCP=ipv4

[DHCPv4]
# The MAC as client id, as the firmware and the initramfs sent it: the node keeps its one
# hardware lease (and address), the one ramboot knows it by (docs/security.md).
ClientIdentifier=mac
"""

BOOTED_UNIT = """\
[Unit]
Description=Tell the console and the ramboot server that this node booted
After=network.target

[Service]
Type=oneshot
ExecStart=/usr/lib/ramboot/booted

[Install]
WantedBy=multi-user.target
"""

# Only with `image build --autologin`: root on every console (tty1-6, the serial one) with
# no password, which behind a BMC's serial-over-LAN or a KVM switch is root for anyone who
# reaches it. By default the consoles ask for a login.
AUTOLOGIN = """\
[Service]
ExecStart=
ExecStart=-/sbin/agetty -o '-p -f -- \\\\u' --noclear --keep-baud --autologin root %I 115200,38400,9600 $TERM
"""

# Host keys the node lacks (the server sent none) are made before sshd starts; with
# the node's identity from the server there are none to make, and no process runs.
SSH_KEYGEN = """\
[Unit]
Description=Make the ssh host keys this node lacks
Before=ssh.service
ConditionPathExists=|!/etc/ssh/ssh_host_ed25519_key
ConditionPathExists=|!/etc/ssh/ssh_host_ecdsa_key
ConditionPathExists=|!/etc/ssh/ssh_host_rsa_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=ssh.service
"""

# The root is RAM: a "persistent" journal would be a second copy in RAM, made by a
# flush on the way to sysinit.target.
JOURNALD = """\
[Journal]
Storage=volatile
"""
# Generators and units for disks a RAM root has none of: the boot disk's GPT
# partitions, a swap to resume from, offline updates, ext4-on-LVM snapshots.
NO_DISK_GENERATORS = ("systemd-gpt-auto-generator", "systemd-hibernate-resume-generator",
                      "systemd-system-update-generator")
NO_DISK_UNITS = ("e2scrub_reap.service",)


def autologin(tree: Path) -> None:
    """Root logged in on every console: the operator's choice (`image build --autologin`)."""
    for unit in ("serial-getty@.service.d", "getty@.service.d"):
        (tree / "etc/systemd/system" / unit).mkdir(parents=True, exist_ok=True)
        (tree / "etc/systemd/system" / unit / "ramboot-autologin.conf").write_text(AUTOLOGIN)


def apt_sources(etc: Path = Path("/etc/apt")) -> list[tuple[str, list[str]]]:
    """(URI, suites) of the host's enabled `deb` sources, one-line and deb822 forms."""
    out: list[tuple[str, list[str]]] = []
    files = [etc / "sources.list"] + sorted((etc / "sources.list.d").glob("*.list"))
    for f in files:
        for line in _read(f).splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                out.append((words[1], [words[2]]))
    for f in sorted((etc / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", _read(f)):
            fields: dict[str, str] = {}
            for ln in stanza.splitlines():
                if ln.startswith("#") or ":" not in ln:
                    continue
                k, _, v = ln.partition(":")
                fields[k.strip().lower()] = v.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                for uri in fields.get("uris", "").split():
                    out.append((uri, fields.get("suites", "").split()))
    return out


def _read(p: Path) -> str:
    try:
        return p.read_text()
    except OSError:
        return ""


def mirror_lines(suite: str, sources: list[tuple[str, list[str]]]) -> list[str]:
    """The host's Debian archive (and security archive) for `suite`."""
    plain = [u for u, suites in sources if any(s and "-" not in s and "/" not in s for s in suites)]
    main = next((u for u in plain if u.rstrip("/").endswith("/debian")), plain[0] if plain else None)
    if main is None:
        raise ImageError("debian: no Debian archive among apt's sources in /etc/apt (mmdebstrap needs one)")
    lines = [f"deb {main} {suite} main"]
    if any(s.endswith("-updates") for _, suites in sources for s in suites) and suite not in NO_SECURITY:
        lines.append(f"deb {main} {suite}-updates main")
    sec = next((u for u, suites in sources if any(s.endswith("-security") for s in suites)), None)
    if sec and suite not in NO_SECURITY:
        lines.append(f"deb {sec} {suite}-security main")
    return lines


def parse_spec(spec: str) -> tuple[str, list[str]]:
    suite, _, pkgs = spec.partition(":")
    if not re.fullmatch(r"[a-z][a-z0-9-]*", suite):
        raise ImageError(f"--rootfs debian:{spec}: bad suite name {suite!r}")
    extra = [p for p in pkgs.split(",") if p]
    bad = [p for p in extra if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", p)]
    if bad:
        raise ImageError(f"--rootfs debian:{spec}: bad package name {bad[0]!r}")
    return suite, extra


def local_debs(debs: tuple[Path, ...], where: Path) -> list[str]:
    """`image build --deb FILE`: each package checked and copied under `where` with a plain
    name (mmdebstrap splits its package list at commas and spaces); their absolute paths."""
    out = []
    for i, deb in enumerate(debs):
        proc = subprocess.run(["dpkg-deb", "--field", str(deb), "Package"], capture_output=True, text=True)
        if proc.returncode != 0 or not proc.stdout.strip():
            why = (proc.stderr.strip().splitlines() or ["not a Debian package"])[-1]
            raise ImageError(f"--deb {deb}: {why}")
        where.mkdir(parents=True, exist_ok=True)
        dest = where / f"local-{i}.deb"
        shutil.copyfile(deb, dest)
        out.append(str(dest.resolve()))
    return out


def bootstrap(spec: str, tree: Path, console: Console, debs: tuple[Path, ...] = ()) -> None:
    suite, extra = parse_spec(spec)
    if shutil.which("mmdebstrap") is None:
        raise ImageError("mmdebstrap not found: run `make setup`")
    if SSH_PACKAGES & set(extra):
        extra = [p for p in extra if p != "ssh"] + ["openssh-server"]
    local = local_debs(debs, tree.parent / "debs")
    pkgs = sorted(set(BASE_PACKAGES + extra)) + local
    # apt hands dpkg (in the chroot) the local packages' own paths: mmdebstrap's hook puts
    # them at those paths inside the root for the install, and takes them out after.
    hooks = ["--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount"] if local else []
    cmd = ["mmdebstrap", "--mode=root", "--variant=minbase", "--format=directory", *hooks,
           f"--include={','.join(pkgs)}", suite, str(tree), *mirror_lines(suite, apt_sources())]
    with console.status(f"bootstrapping Debian {suite} with mmdebstrap ({len(pkgs)} extra packages)…"):
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(("E:", "mmdebstrap: error"))]
        why = (lines or proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"])[0]
        raise ImageError(f"mmdebstrap {suite} failed: {why}")
    configure(tree, ssh="openssh-server" in pkgs)


def configure(tree: Path, ssh: bool) -> None:
    """What a RAM-booted node needs on top of the packages."""
    etc = tree / "etc"
    (etc / "systemd/network").mkdir(parents=True, exist_ok=True)
    (etc / "systemd/network/50-ramboot.network").write_text(NETWORK)
    (etc / "systemd/system/ramboot-booted.service").write_text(BOOTED_UNIT)
    booted = tree / "usr/lib/ramboot/booted"
    booted.parent.mkdir(parents=True, exist_ok=True)
    booted.write_bytes((resources.files("ramboot.images") / "initramfs" / "booted").read_bytes())
    os.chmod(booted, 0o755)
    units = ["systemd-networkd.service", "ramboot-booted.service"]
    disable = [u for u in NO_DISK_UNITS if (tree / "usr/lib/systemd/system" / u).exists()]
    if ssh:
        for key in (etc / "ssh").glob("ssh_host_*"):
            key.unlink()  # every node makes its own at boot: never one shared host key
        (etc / "systemd/system/ramboot-ssh-keygen.service").write_text(SSH_KEYGEN)
        units.append("ramboot-ssh-keygen.service")
    (etc / "systemd/journald.conf.d").mkdir(parents=True, exist_ok=True)
    (etc / "systemd/journald.conf.d/ramboot.conf").write_text(JOURNALD)
    (etc / "systemd/system-generators").mkdir(parents=True, exist_ok=True)
    for gen in NO_DISK_GENERATORS:
        link = etc / "systemd/system-generators" / gen
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    for verb, names in (("disable", disable), ("enable", units)):
        if not names:
            continue
        proc = subprocess.run(["chroot", str(tree), "systemctl", verb, *names], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ImageError(f"{verb.rstrip('e')}ing {', '.join(names)} in the Debian root failed: "
                             f"{proc.stderr.strip()}")
    (etc / "hostname").write_text("ramboot\n")
    (etc / "fstab").write_text("# ramboot: the root is a RAM overlay; nothing to mount\n")
    (etc / "machine-id").write_text("")  # a fresh one per boot
    dbus_id = tree / "var/lib/dbus/machine-id"
    if dbus_id.is_file() and not dbus_id.is_symlink():
        dbus_id.unlink()
