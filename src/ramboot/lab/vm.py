"""Blank QEMU VMs that PXE-boot on the lab bridge, watched until they reach their RAM root.

A VM has no disk, only a virtio NIC on its own tap in the lab bridge, and its
serial console (`-nographic`) is copied live to stdout while being scanned for
the boot's milestones. It has reached its RAM root when the console prints
`ramboot: booted` or the server records a `booted` event for its MAC.

BIOS is SeaBIOS with QEMU's own iPXE option ROM. UEFI is OVMF with the NIC's
option ROM emptied, so OVMF's own PXE client (arch 7) fetches the `.efi` loader
over TFTP and the whole UEFI chain is exercised. `uefi-http` is the same OVMF
with its PXE turned off (fw_cfg), so its UEFI HTTP boot (vendor class
HTTPClient, arch 16) asks for an http URL. `secure_boot` is Debian's OVMF with
Microsoft's keys enrolled and Secure Boot on (`OVMF_CODE_4M.ms.fd`, a copy of
`OVMF_VARS_4M.ms.fd`), which needs q35 with SMM and a secure flash.

A kept VM (`keep=True`, `lab vm --keep`) outlives the command that booted it: its
serial console is a unix socket QEMU serves (`console.sock`, one client at a time,
everything also logged to `console.log`) and its monitor another (`monitor.sock`),
both in the VM's directory under the lab's, so `lab vm --console` attaches to it and
`lab vm --stop` presses its power button (ACPI), as a person at the machine would.

`/dev/kvm` may exist while a KVM guest hangs, so KVM is used only after a
bounded probe has booted a kernel to user space under it; otherwise TCG.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from ..macaddr import mac_from_bytes, normalize_mac
from .impair import Impairment
from .netns import Lab, LabError, call_in_netns, is_zombie, pid_alive, stop_pid

QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
OVMF_CODE_SB = Path("/usr/share/OVMF/OVMF_CODE_4M.ms.fd")
OVMF_VARS_SB = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
FIRMWARES = ("bios", "uefi", "uefi-http")
PROBE_MARK = "ramboot-kvm-probe-ok"
REPORT_GRACE = 10.0  # seconds a node gets to post what its console said, before its VM is stopped

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>cDEHM78]")

# Console text -> milestone, for the timeline and for "where did it stop".
# Markers from ramboot's own scripts come first; the rest are the firmwares' words.
_CONSOLE_MILESTONES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^ramboot: booted\b"), "booted"),
    (re.compile(r"^ramboot: FAILED\b"), "failed"),
    (re.compile(r"^ramboot: stage (\S+)"), r"\1"),
    (re.compile(r"^ramboot: booting "), "script"),
    (re.compile(r"iPXE \d|iPXE initialising"), "ipxe"),
    (re.compile(r">>Start PXE over IPv4"), "uefi-pxe"),
    (re.compile(r">>Start HTTP Boot over IPv4"), "uefi-http"),
    (re.compile(r"Access Denied"), "refused"),
    (re.compile(r"^Welcome to GRUB"), "grub"),
    (re.compile(r"secureboot: Secure boot enabled"), "secure-boot-on"),
    (re.compile(r"Configuring \(net\d"), "ipxe-dhcp"),
    (re.compile(r"Station IP address is"), "uefi-dhcp"),
    (re.compile(r"PXELINUX \d"), "pxelinux"),
    (re.compile(r"Linux version \d"), "kernel-start"),
    (re.compile(r"Run /init as init process|Freeing unused kernel"), "kernel-init"),
]


def unix_time(v: object) -> float:
    """An API time (ISO 8601 with its offset, or a unix time) as a unix time; 0 if it is neither."""
    if isinstance(v, int | float):
        return float(v)
    try:
        return datetime.fromisoformat(str(v)).timestamp()
    except ValueError:
        return 0.0


def random_mac() -> str:
    """A MAC in QEMU's 52:54:00 range, random enough that parallel VMs never collide."""
    return mac_from_bytes(b"\x52\x54\x00" + secrets.token_bytes(3))


def tap_name(mac: str) -> str:
    return "rbt" + normalize_mac(mac).replace(":", "")[6:]


_TUNSETIFF, _IFF_TAP, _IFF_NO_PI = 0x400454CA, 0x0002, 0x1000


def open_tap(lab: Lab, name: str) -> int:
    """A tap in `lab`'s bridge, opened from inside its namespace; the fd goes to QEMU, so a VM's
    second NIC sits on another lab's bridge than the one QEMU runs beside. The tap goes with
    the last fd."""
    def make() -> int:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TAP | _IFF_NO_PI))
        except OSError:
            os.close(fd)
            raise
        return fd

    fd = call_in_netns(lab.ns, make)
    try:
        lab.ip("link", "set", name, "master", lab.bridge, "up")
    except LabError:
        os.close(fd)
        raise
    return fd


# -- KVM probe -------------------------------------------------------------------

def _probe_initrd(path: Path) -> Path:
    """A one-file initramfs: static busybox printing a marker and powering off."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    tree = path.parent / "probe-root"
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "bin").mkdir(parents=True)
    shutil.copy(busybox, tree / "bin" / "busybox")
    init = tree / "init"
    init.write_text(f"#!/bin/busybox sh\n/bin/busybox echo {PROBE_MARK}\n/bin/busybox poweroff -f\n")
    init.chmod(0o755)
    files = subprocess.run(["find", "."], cwd=tree, capture_output=True, text=True, check=True).stdout
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=tree, input=files.encode(),
                          capture_output=True, check=True)
    path.write_bytes(cpio.stdout)
    shutil.rmtree(tree, ignore_errors=True)
    return path


def probe_kvm(kernel: Path | None, workdir: Path, timeout: float = 15.0) -> tuple[bool, str]:
    """Boot `kernel` with a tiny initramfs under KVM; True only if it reaches user space in time."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is missing or not accessible"
    if kernel is None or not kernel.is_file():
        return False, "no kernel to probe KVM with yet"
    workdir.mkdir(parents=True, exist_ok=True)
    initrd = _probe_initrd(workdir / "kvm-probe.cpio")
    cmd = [QEMU, "-accel", "kvm", "-display", "none", "-nodefaults", "-no-reboot", "-m", "256",
           "-kernel", str(kernel), "-initrd", str(initrd), "-append", "console=ttyS0 quiet panic=-1",
           "-serial", "stdio", "-monitor", "none"]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, f"a KVM guest did not reach user space within {timeout:.0f} s (it hangs on this host)"
    finally:
        initrd.unlink(missing_ok=True)
    if PROBE_MARK.encode() in p.stdout:
        return True, f"a KVM guest reached user space in {time.monotonic() - t0:.1f} s"
    return False, f"a KVM guest failed: {p.stderr.decode(errors='replace').strip()[:200] or 'no output'}"


def choose_accel(lab: Lab, kernel: Path | None) -> tuple[str, str]:
    """kvm or tcg, and why. `RAMBOOT_LAB_ACCEL` forces one; a probe result is kept per lab dir."""
    forced = os.environ.get("RAMBOOT_LAB_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced, "forced by RAMBOOT_LAB_ACCEL"
    cache = lab.root / "accel.json"
    try:
        saved = json.loads(cache.read_text())
        return saved["accel"], saved["reason"] + " (cached)"
    except (OSError, ValueError, KeyError):
        pass
    ok, reason = probe_kvm(kernel, lab.root / "probe")
    accel = "kvm" if ok else "tcg"
    if ok or kernel is not None:  # "no kernel yet" is not a verdict worth keeping
        lab.root.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"accel": accel, "reason": reason}))
    return accel, reason


# -- the VM ------------------------------------------------------------------------

def _stop_child(lab: Lab, proc: subprocess.Popen[bytes], key: str) -> None:
    """Stop a child of this boot (QEMU, its impair relay) by its PID and drop it from the lab's records."""
    stop_pid(proc.pid, None, grace=5)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    lab.forget(key)


def console_socket(workdir: Path) -> Path:
    return workdir / "console.sock"


def monitor_socket(workdir: Path) -> Path:
    return workdir / "monitor.sock"


def qemu_argv(firmware: str, mac: str, tap: str, accel: str, workdir: Path, memory_mb: int = 1024,
              uuid: str | None = None, secure_boot: bool = False, udp: tuple[int, int] | None = None,
              extra_nics: tuple[tuple[int, str], ...] = (), tpm: Path | None = None,
              ipv6_only: bool = False, keep: bool = False) -> list[str]:
    """The QEMU command line for a blank network-booting VM with no disk (`uuid`: its SMBIOS UUID).

    `udp` (relay port, QEMU's port): the NIC talks to an impair relay on 127.0.0.1 instead of the tap.
    `extra_nics`: (open tap fd, MAC) of further NICs, which never boot (no option ROM).
    `tpm`: the control socket of a swtpm: the VM has that TPM 2.0 on its TIS interface.
    `keep`: the serial console and the monitor are unix sockets in `workdir` (the console logged to
    `console.log`), and a reboot boots again, instead of stdio and an exit."""
    if firmware not in FIRMWARES:
        raise LabError(f"unknown firmware {firmware!r}: use {', '.join(FIRMWARES)}")
    if secure_boot and firmware == "bios":
        raise LabError("--secure-boot needs a UEFI firmware: use --firmware uefi (or uefi-http)")
    netdev = (f"socket,id=n0,udp=127.0.0.1:{udp[0]},localaddr=127.0.0.1:{udp[1]}" if udp
              else f"tap,id=n0,ifname={tap},script=no,downscript=no")
    argv = [QEMU, "-name", f"ramboot-{mac}", "-accel", accel, "-m", str(memory_mb)]
    if keep:
        argv += ["-display", "none", "-chardev",
                 f"socket,id=con,path={console_socket(workdir)},server=on,wait=off,"
                 f"logfile={workdir / 'console.log'},logappend=off",
                 "-serial", "chardev:con", "-monitor", f"unix:{monitor_socket(workdir)},server=on,wait=off"]
    else:
        argv += ["-nographic", "-monitor", "none", "-no-reboot"]
    argv += ["-netdev", netdev]
    if uuid:
        argv += ["-uuid", uuid]
    if tpm is not None:
        argv += ["-chardev", f"socket,id=chrtpm,path={tpm}", "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
                 "-device", "tpm-tis,tpmdev=tpm0"]
    if firmware == "bios":
        argv += ["-machine", "pc", "-device", f"virtio-net-pci,netdev=n0,mac={mac},bootindex=1"]
    else:
        code, variables = (OVMF_CODE_SB, OVMF_VARS_SB) if secure_boot else (OVMF_CODE, OVMF_VARS)
        for f in (code, variables):
            if not f.is_file():
                raise LabError(f"{f} is missing; install it with: apt-get install ovmf")
        vars_copy = workdir / "OVMF_VARS.fd"
        shutil.copyfile(variables, vars_copy)
        if secure_boot:
            # The Secure Boot build keeps its variables in SMM: q35 with SMM on, and a
            # flash only SMM may write (so the OS cannot turn Secure Boot off).
            argv += ["-machine", "q35,smm=on", "-global", "driver=cfi.pflash01,property=secure,value=on"]
        else:
            argv += ["-machine", "q35"]
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
                 # romfile= empty: no iPXE ROM, so OVMF's own PXE (or HTTP boot) client boots.
                 "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile=,bootindex=1"]
        if firmware == "uefi-http":
            # PXE off in OVMF's network stack: the NIC's boot options are then HTTP boot only.
            argv += ["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n",
                     "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n"]
        elif ipv6_only:
            # No IPv4 in the lab: OVMF's PXEv4 would only time out before its PXEv6 starts.
            argv += ["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=n"]
    for i, (fd, nic_mac) in enumerate(extra_nics, start=1):
        argv += ["-netdev", f"tap,id=n{i},fd={fd}", "-device", f"virtio-net-pci,netdev=n{i},mac={nic_mac},romfile="]
    return argv


def _forgive_power_cuts(state: Path) -> None:
    """The lab ends a VM by killing QEMU, a power cut to its TPM: each one counts as a failed
    authorisation (a TPM cannot tell a cut from an attack), and swtpm's default of 3 locks the
    AK out of quotes and ActivateCredential at a VM's fourth boot. Before each boot the lab
    clears that count (TPM2_DictionaryAttackLockReset, the lockout auth is empty) and shuts the
    TPM down in order, as an operator of a machine it owns would. docs/security.md says what
    this means for real nodes."""
    # A short directory of its own: a unix socket's path holds at most 107 bytes, and a VM's
    # workdir under pytest's temporary tree can take nearly all of them.
    short = Path(tempfile.mkdtemp(prefix="rbtpm-"))
    sock, ctrl = short / "da.sock", short / "da.sock.ctrl"  # the swtpm TCTI wants both
    proc = subprocess.Popen(["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}", "--server",
                             f"type=unixio,path={sock}", "--ctrl", f"type=unixio,path={ctrl}",
                             "--flags", "not-need-init,startup-clear"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (sock.exists() and ctrl.exists()):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise LabError("swtpm did not start to clear its lockout count")
            time.sleep(0.05)
        env = {**os.environ, "TPM2TOOLS_TCTI": f"swtpm:path={sock}"}
        for argv in (["tpm2_dictionarylockout", "--clear-lockout"], ["tpm2_shutdown", "--clear"]):
            p = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
            if p.returncode != 0:
                raise LabError(f"{argv[0]}: {p.stderr.strip()[-300:]}")
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(short, ignore_errors=True)


def start_swtpm(lab: Lab, key: str, state: Path, workdir: Path) -> Path:
    """A swtpm (TPM 2.0) for one VM, its state in `state`: manufactured on first use by
    swtpm_setup (an EK and its certificate in NV, as a vendor ships it). Its socket."""
    state.mkdir(parents=True, exist_ok=True)
    if not (state / "tpm2-00.permall").exists():
        p = subprocess.run(["swtpm_setup", "--tpm2", "--tpmstate", str(state), "--createek", "--create-ek-cert",
                            "--create-platform-cert", "--lock-nvram", "--overwrite"],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise LabError(f"swtpm_setup failed: {(p.stderr or p.stdout).strip()[-300:]}; apt-get install swtpm-tools")
    _forgive_power_cuts(state)
    sock = workdir / "swtpm.sock"
    sock.unlink(missing_ok=True)
    log = workdir / "swtpm.log"
    lab.spawn(key, ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}", "--ctrl",
                    f"type=unixio,path={sock}", "--terminate"], log=log)
    deadline = time.monotonic() + 10
    while not sock.exists():
        if time.monotonic() > deadline or not lab.alive(key):
            raise LabError(f"swtpm did not start: {log.read_text(errors='replace')[-300:] if log.exists() else ''}")
        time.sleep(0.05)
    return sock


@dataclass
class Mark:
    at: float  # epoch seconds
    stage: str
    source: str  # console | server | node
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class BootResult:
    ok: bool
    mac: str
    firmware: str
    accel: str
    started: float
    ended: float
    stopped_at: str  # the last milestone seen
    reason: str
    marks: list[Mark]
    console_log: Path
    last_console: list[str]
    wire: dict[str, Any] = field(default_factory=dict)  # the impair relay's counters, when the wire was impaired
    lines: list[tuple[float, str]] = field(default_factory=list)  # the console, cleaned, with arrival times

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def first(self, stage: str) -> Mark | None:
        return next((m for m in self.marks if m.stage == stage), None)


class _LogTail:
    """A kept VM's console as a stream: `console.log` as QEMU writes it, until QEMU exits."""

    def __init__(self, log: Path, proc: subprocess.Popen[bytes]):
        self.log, self.proc, self.pos = log, proc, 0

    def read1(self, n: int) -> bytes:
        while True:
            try:
                with open(self.log, "rb") as f:
                    f.seek(self.pos)
                    chunk = f.read(n)
            except FileNotFoundError:
                chunk = b""
            if chunk:
                self.pos += len(chunk)
                return chunk
            if self.proc.poll() is not None:
                return b""
            time.sleep(0.1)


class _Console:
    """Copies QEMU's output to `echo` as it comes and keeps timestamped, cleaned lines
    (and writes it to `log`, unless QEMU does: `None`)."""

    def __init__(self, stream: IO[bytes] | _LogTail, log: Path | None, echo: IO[bytes] | None):
        self.lines: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self.closed = False
        self._t = threading.Thread(target=self._pump, args=(stream, log, echo), daemon=True)
        self._t.start()

    def _pump(self, stream: IO[bytes] | _LogTail, log: Path | None, echo: IO[bytes] | None) -> None:
        buf = b""
        with open(log or os.devnull, "wb") as lf:
            while True:
                chunk = stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096)
                if not chunk:
                    break
                if log is not None:
                    lf.write(chunk)
                    lf.flush()
                if echo is not None:
                    try:
                        echo.write(chunk)
                        echo.flush()
                    except (OSError, ValueError):
                        echo = None
                buf += chunk
                *done, buf = re.split(rb"\r\n|\n|\r", buf)
                now = time.time()
                with self.cond:
                    for raw in done:
                        text = _ANSI.sub("", raw.decode("utf-8", "replace")).strip()
                        if text:
                            self.lines.append((now, text))
                    self.cond.notify_all()
        with self.cond:
            if buf.strip():
                self.lines.append((time.time(), _ANSI.sub("", buf.decode("utf-8", "replace")).strip()))
            self.closed = True
            self.cond.notify_all()

    def join(self, timeout: float = 2.0) -> None:
        self._t.join(timeout)


def console_marks(lines: list[tuple[float, str]]) -> list[Mark]:
    """Milestones from the console, each stage once (its first sighting)."""
    seen: set[str] = set()
    out = []
    for at, text in lines:
        for pat, stage in _CONSOLE_MILESTONES:
            m = pat.search(text)
            if not m:
                continue
            name = m.expand(stage)
            if name not in seen:
                seen.add(name)
                detail = {"line": text[:160]}
                if name == "failed":
                    detail["reason"] = text.split("FAILED", 1)[1].strip()
                out.append(Mark(at, name, "console", detail))
            break
    return out


def events_from_api(raw: object, since: float) -> list[Mark]:
    """This boot's server and node events from `GET /api/v1/nodes/{mac}/events`, oldest first."""
    out = []
    for e in raw if isinstance(raw, list) else []:
        try:
            at = datetime.fromisoformat(e["at"]).timestamp()  # the API's times are ISO 8601 with a timezone
        except (KeyError, TypeError, ValueError):
            continue
        if at >= since:  # the server's clock is this host's: a boot's events all come after its VM starts
            out.append(Mark(at, str(e.get("stage")), str(e.get("source") or "server"), dict(e.get("detail") or {})))
    out.sort(key=lambda m: m.at)
    return out


def boot_vm(
    lab: Lab,
    firmware: str = "bios",
    mac: str | None = None,
    timeout: float = 300.0,
    echo: IO[bytes] | None = None,
    api_base: str | None = None,
    api_token: str | None = None,
    accel: str | None = None,
    memory_mb: int = 1024,
    stop_on_failure: bool = True,
    uuid: str | None = None,
    on_booted: Callable[[], None] | None = None,
    secure_boot: bool = False,
    stop_on: tuple[str, ...] = (),
    on_stage: Callable[[str], None] | None = None,
    impair: Impairment | None = None,
    extra_nics: tuple[tuple[Lab, str], ...] = (),
    tpm: Path | None = None,
    keep: bool = False,
) -> BootResult:
    """Boot one blank VM in the lab and wait for its RAM root (or a failure, or the timeout).

    `on_booted` runs once the node has booted, while the VM still runs (to log in, say).
    `stop_on`: milestones that end the wait early (the boot is then not ok).
    `on_stage` runs once per console stage the moment it shows (`kernel-start`,
    `initramfs`, ...): to kill a server at that point of a boot, say.
    `api_token`: for the server at `api_base` (default: the lab's, `Lab.api_token`).
    `impair`: the VM's wire into the bridge drops and delays frames each way (`ramboot.lab.impair`,
    a relay between the VM's tap and QEMU's socket netdev).
    `extra_nics`: (lab, MAC) of more NICs, each on that lab's bridge (a node with a second link).
    `tpm`: a TPM 2.0 (swtpm) whose state is kept in this folder, made (with its EK certificate)
    the first time: the same folder is the same TPM at every boot.
    `keep`: once booted, the VM keeps running (its console and monitor on unix sockets) until
    `stop_vm` or the lab's teardown; on any other outcome it is stopped as usual.
    """
    if not lab.exists():
        raise LabError(f"the lab network {lab.ns} is not up; run: ramboot lab up")
    mac = normalize_mac(mac) if mac else random_mac()
    tap = tap_name(mac)
    workdir = lab.root / "vms" / mac.replace(":", "")
    workdir.mkdir(parents=True, exist_ok=True)
    if accel is None:
        kernel = next(iter(sorted(lab.data_dir.glob("images/*/vmlinuz"))), None)
        accel, why = choose_accel(lab, kernel)
        if echo is not None:
            echo.write(f"ramboot lab: {accel.upper()} ({why})\n".encode())
    base = api_base or lab.base_url
    key = vm_key(mac)
    if lab.alive(key):
        raise LabError(f"{mac} is already running in the lab; stop it with: ramboot lab vm --stop {mac}")
    lab.add_tap(tap)
    relay_key, relay_log, udp = f"impair-{mac}", workdir / "impair.log", None
    if impair is not None:
        relay_log.unlink(missing_ok=True)
        relay = lab.spawn(relay_key, [sys.executable, "-m", "ramboot.lab.impair", "--port", f"tap::{tap}",
                                      "--port", "udp:0:0", *impair.argv()], log=relay_log)
        deadline = time.monotonic() + 15
        while not (relay_log.exists() and relay_log.read_text().startswith("ready")):
            if relay.poll() is not None or time.monotonic() > deadline:
                lab.del_tap(tap)
                raise LabError(f"impair relay did not start: {relay_log.read_text() if relay_log.exists() else ''}")
            time.sleep(0.05)
        _, lport, qport = relay_log.read_text().split("\n", 1)[0].split()
        udp = (int(lport), int(qport))
    tpm_key, tpm_sock = f"swtpm-{mac}", None
    if tpm is not None:
        try:
            tpm_sock = start_swtpm(lab, tpm_key, tpm, workdir)
        except LabError:
            lab.del_tap(tap)
            raise
    fds: list[int] = []
    try:
        for nic_lab, nic_mac in extra_nics:
            fds.append(open_tap(nic_lab, tap_name(nic_mac)))
        argv = qemu_argv(firmware, mac, tap, accel, workdir, memory_mb, uuid, secure_boot, udp,
                         tuple(zip(fds, (normalize_mac(m) for _, m in extra_nics), strict=True)), tpm_sock,
                         ipv6_only=lab.ipv6 == "only", keep=keep)
        started = time.time()
        if keep:
            for f in (console_socket(workdir), monitor_socket(workdir), workdir / "console.log"):
                f.unlink(missing_ok=True)
            proc = lab.spawn(key, argv, log=workdir / "qemu.log", pass_fds=fds)
            console = _Console(_LogTail(workdir / "console.log", proc), None, echo)
        else:
            proc = lab.spawn(key, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=fds)
            assert proc.stdout is not None  # a PIPE
            console = _Console(proc.stdout, workdir / "console.log", echo)
    finally:
        for fd in fds:
            os.close(fd)  # QEMU holds its own copies
    ok, reason, api_events = False, "", []
    end_seen = 0.0
    deadline = time.monotonic() + timeout
    next_poll = 0.0
    shown: set[str] = set()
    try:
        while True:
            with console.cond:
                console.cond.wait(0.5 if on_stage is None else 0.05)
                lines = list(console.lines)
            marks = console_marks(lines)
            stages = {m.stage for m in marks}
            if on_stage is not None:
                for m in marks:
                    if m.stage not in shown:
                        shown.add(m.stage)
                        on_stage(m.stage)
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + 1.0
                api_events = events_from_api(lab.api(f"/api/v1/nodes/{mac}/events", base, api_token), started)
                stages |= {m.stage for m in api_events}
            for end in ("booted", "failed"):
                # Seen on the console: give the node a moment to post the same event
                # to the server before the VM is stopped, so the server's record is whole.
                if end in stages and not any(m.stage == end for m in api_events):
                    end_seen = end_seen or time.monotonic()
                    if time.monotonic() - end_seen < REPORT_GRACE:
                        next_poll = 0.0
                        stages.discard(end)
            if "booted" in stages:
                ok, reason = True, "reached its RAM root"
                if on_booted is not None:
                    on_booted()
                break
            if "failed" in stages and stop_on_failure:
                fail = next((m for m in marks + api_events if m.stage == "failed"), None)
                fail_reason = (fail.detail.get("reason") if fail else "") or "see the console"
                reason = f"the node reported a failure: {fail_reason}"
                break
            seen = next((st for st in stop_on if st in stages), None)
            if seen:  # a milestone the caller waits for (e.g. a firmware's refusal)
                reason = f"stopped at {seen}, as asked"
                break
            if proc.poll() is not None:
                reason = f"QEMU exited with status {proc.returncode}"
                break
            if time.monotonic() >= deadline:
                reason = f"timed out after {timeout:.0f} s"
                break
    finally:
        ended = time.time()
        kept = keep and ok and proc.poll() is None
        if not kept:
            _stop_child(lab, proc, key)
            if impair is not None:
                _stop_child(lab, relay, relay_key)
            if tpm is not None:
                lab.stop(tpm_key)
            lab.del_tap(tap)
            console.join()
    time.sleep(0.5)  # the server batches events a few times a second
    api_events = events_from_api(lab.api(f"/api/v1/nodes/{mac}/events", base, api_token), started) or api_events
    marks = merge_marks(console_marks(console.lines), api_events)
    stopped = marks[-1].stage if marks else "no firmware output"
    wire = {}
    if impair is not None and relay_log.exists():
        for line in relay_log.read_text().splitlines():
            if line.startswith("{"):
                wire = json.loads(line)
    with console.cond:
        lines = list(console.lines)
    return BootResult(ok, mac, firmware, accel, started, ended, stopped, reason, marks,
                      workdir / "console.log", [t for _, t in lines[-5:]], wire, lines)


def vm_key(mac: str) -> str:
    """The VM's name among the lab's processes (its state file)."""
    return f"vm-{normalize_mac(mac)}"


def vm_dir(lab: Lab, mac: str) -> Path:
    return lab.root / "vms" / normalize_mac(mac).replace(":", "")


def kept_vms(lab: Lab) -> list[str]:
    """The MACs of the VMs running in the lab now."""
    return sorted(k[3:] for k in lab.state()["pids"] if k.startswith("vm-") and lab.alive(k))


def _monitor(lab: Lab, mac: str, command: str) -> None:
    """One HMP command on a kept VM's monitor socket."""
    path = monitor_socket(vm_dir(lab, mac))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        try:
            s.connect(str(path))
        except OSError as e:
            raise LabError(f"{mac} has no monitor at {path} ({e.strerror}): was it booted with --keep?") from None
        _read_to_prompt(s, b"")  # the banner and the first prompt
        s.sendall(command.encode() + b"\n")
        # Wait for the prompt after the command: HMP echoes the line a character at a time, and
        # closing before it has run drops the rest of the line (the ACPI press was lost that way).
        _read_to_prompt(s, b"\r\n")


def _read_to_prompt(s: socket.socket, before: bytes) -> None:
    """Read the monitor until `before` + its `(qemu) ` prompt (or the socket's timeout)."""
    seen = b""
    while not seen.endswith(before + b"(qemu) "):
        chunk = s.recv(4096)
        if not chunk:
            return
        seen += chunk


def stop_vm(lab: Lab, mac: str, grace: float = 90.0) -> bool:
    """Power a kept VM off with its ACPI button, as a person would; after `grace` seconds, end QEMU.

    True when the guest powered itself off in time."""
    mac = normalize_mac(mac)
    key = vm_key(mac)
    rec = lab.state()["pids"].get(key)
    if not rec:
        raise LabError(f"{mac} is not running in the lab (running: {', '.join(kept_vms(lab)) or 'none'})")
    if not pid_alive(rec[0], rec[1]):  # it powered itself off (`poweroff` inside): what it left goes
        lab.stop(key)
        lab.stop(f"impair-{mac}")
        lab.del_tap(tap_name(mac))
        return True
    _monitor(lab, mac, "system_powerdown")
    deadline = time.monotonic() + grace
    clean, press = False, time.monotonic() + 15
    while time.monotonic() < deadline:
        if time.monotonic() >= press:
            # Pressed again every 15 s: a press before systemd-logind listens (a node still
            # starting, a slow TCG guest) is lost, as on a real machine.
            with contextlib.suppress(LabError, OSError):
                _monitor(lab, mac, "system_powerdown")
            press = time.monotonic() + 15
        try:  # reap it if this process started it (a test), so it does not linger as a zombie
            os.waitpid(rec[0], os.WNOHANG)
        except ChildProcessError:
            pass
        if not pid_alive(rec[0], rec[1]) or is_zombie(rec[0]):
            clean = True
            break
        time.sleep(0.2)
    lab.stop(key)
    lab.stop(f"impair-{mac}")  # its wire's relay, when it was booted with --loss or --delay
    lab.del_tap(tap_name(mac))
    return clean


def attach_console(lab: Lab, mac: str, stdin: IO[bytes], stdout: IO[bytes], detach: bytes = b"\x1d") -> None:
    """Relay a kept VM's serial console to this terminal until `detach` (Ctrl-]) or the VM ends.

    The terminal is raw meanwhile, so keys such as Ctrl-C go to the node."""
    path = console_socket(vm_dir(lab, mac))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
    except OSError as e:
        sock.close()
        raise LabError(f"{mac} has no console at {path} ({e.strerror}): was it booted with --keep?") from None
    fd = stdin.fileno()
    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    try:
        if saved is not None:
            tty.setraw(fd)
        while True:
            waited: list[socket.socket | int] = [sock, fd]
            ready, _, _ = select.select(waited, [], [])
            if sock in ready:
                data = sock.recv(4096)
                if not data:
                    return
                stdout.write(data)
                stdout.flush()
            if fd in ready:
                data = os.read(fd, 1024)
                if not data or detach in data:
                    if data.split(detach, 1)[0]:
                        sock.sendall(data.split(detach, 1)[0])
                    return
                sock.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        sock.close()


def address_of(result: BootResult) -> str | None:
    """The address the node was last given (its newest DHCP answer), if the server said."""
    acks = [m for m in result.marks if m.stage == "dhcp-ack" and m.detail.get("ip")]
    return str(acks[-1].detail["ip"]) if acks else None


def merge_marks(console: list[Mark], events: list[Mark]) -> list[Mark]:
    """One ordered list: every server event, node stages once (the node's own report first)."""
    have = {m.stage for m in events}
    out = list(events) + [m for m in console if m.stage not in have]
    out.sort(key=lambda m: m.at)
    return out


# -- the timeline ------------------------------------------------------------------

def _fmt_detail(m: Mark) -> str:
    d = m.detail
    if m.stage in ("dhcp-offer", "dhcp-ack", "proxy-offer"):
        parts = [str(d[k]) for k in ("ip", "firmware", "bootfile") if d.get(k)]
        return " ".join(parts)
    if "bytes" in d and "seconds" in d:
        try:
            nbytes, secs = float(d["bytes"]), float(d["seconds"])
        except (TypeError, ValueError):
            return ""
        what = d.get("file") or d.get("url") or ""
        if nbytes < 100_000:  # a script or config: its size says more than a rate
            return f"{Path(str(what)).name} {nbytes:.0f} bytes"
        rate = f", {nbytes / 1e6 / secs:.1f} MB/s" if secs > 0 else ""
        return f"{Path(str(what)).name} {nbytes / 1e6:.2f} MB in {secs:.2f} s{rate}".strip()
    if m.stage == "failed":
        return str(d.get("reason", ""))
    if m.stage == "verified" and d.get("sha256"):
        return f"sha256 {str(d['sha256'])[:16]}…"
    if m.source == "console":
        return str(d.get("line", ""))[:70]
    return " ".join(f"{k}={v}" for k, v in d.items())[:70]


def format_timeline(result: BootResult) -> str:
    """The boot as a table: seconds since QEMU started, the step's own time, and what happened."""
    head = (f"boot timeline for {result.mac} ({result.firmware}, {result.accel.upper()}): "
            f"{'RAM root reached' if result.ok else 'NOT booted'} in {result.seconds:.1f} s")
    rows = [head, f"  {'t (s)':>7} {'+step':>6}  {'stage':<15} {'from':<7} detail"]
    prev = result.started
    kernel = result.first("kernel-start")
    for m in result.marks:
        detail = _fmt_detail(m)
        if kernel and m.at >= kernel.at and m.stage in ("dhcp-offer", "dhcp-ack"):
            detail = f"{m.detail.get('ip', '')} (the initramfs's own DHCP)"
        rows.append(f"  {m.at - result.started:7.1f} {m.at - prev:6.1f}  {m.stage:<15} {m.source:<7} {detail}")
        prev = m.at
    if not result.ok:
        rows.append(f"  stopped after: {result.stopped_at} ({result.reason})")
        rows.append(f"  console log: {result.console_log}")
    return "\n".join(rows)
