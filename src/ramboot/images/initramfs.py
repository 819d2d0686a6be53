"""ramboot's own initramfs: busybox-static, curl, tpm2-tools and openssl with their libraries (and
ipmitool, with a kernel that has the IPMI drivers), our init, and the kernel's modules it needs.

Modules are picked by name (filesystems, NICs, disks for the inventory) and
closed over their dependencies through the kernel's own `modules.dep` (plus
`modules.softdep`); the copied `modules.dep`/`modules.alias` are the kernel's,
filtered to what we carry, so busybox modprobe can coldplug by modalias.
The archive is a newc cpio written here, entries sorted and every timestamp
fixed, so the same kernel gives the same bytes.
"""

from __future__ import annotations

import builtins
import io
import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import ImageError
from .kernel import Kernel
from .rootfs import busybox_applets, source_epoch

REQUIRED = ("squashfs", "loop", "overlay")
# A live squashfs holding LiveOS/rootfs.img (or ext3fs.img) boots from that inner
# image: ext4 (which mounts ext2/ext3 too) on a read-only loop device. Carried when
# the kernel has it as a module; jbd2, mbcache, crc16 and the crc32c its softdep
# names come through modules.dep, modules.softdep and modules.alias.
LIVE_FS = ("ext4",)
# NICs a VM or cloud host presents; whichever of these the kernel has.
CLOUD_NICS = ("virtio_net", "virtio_pci", "e1000", "e1000e", "vmxnet3", "ena", "gve", "hv_netvsc",
              "xen_netfront", "8139cp", "8139too", "ne2k_pci", "pcnet32")
# UEFI variables (Secure Boot's state), when the kernel has efivarfs as a module.
# Modules are copied byte for byte, so a kernel under lockdown still loads them:
# Debian's signature is appended to each file.
EFI_FS = ("efivarfs",)
# Disks, only so the inventory can list them.
DISKS = ("virtio_blk", "virtio_scsi", "sd_mod", "nvme", "ahci", "ata_piix")
# The TPM (a node's identity, tpm_gate.py), when the kernel has its drivers as modules
# (Debian's build them in).
TPM = ("tpm_tis", "tpm_crb")
# The TPM's tools: tpm2-tools' one binary, and the TCTI it loads with dlopen (no ldd sees
# that one); openssl opens the overlay sealed to the boot key they recover.
TPM_TCTI = "libtss2-tcti-device.so.0"
GENERIC_NIC_DIRS = ("kernel/drivers/net/ethernet/",)
# The machine's own BMC, read in band (initramfs/bmc.sh), when the kernel has the IPMI drivers as
# modules (Debian's generic kernel does, its cloud kernel has none). ipmi_si is loaded by bmc.sh
# alone, in the background and only when the firmware names a BMC: its aliases are left out of
# the initramfs's modules.alias, so coldplug never waits on a BMC that does not answer.
IPMI = ("ipmi_si", "ipmi_devintf")
IPMI_NO_COLDPLUG = "ipmi_si"


def norm(name: str) -> str:
    """Module names: `xen-netfront.ko.xz` and `xen_netfront` are the same module."""
    base = name.rsplit("/", 1)[-1]
    base = re.sub(r"\.ko(\.(xz|gz|zst))?$", "", base)
    return base.replace("-", "_")


@dataclass
class ModuleIndex:
    """The kernel's modules.dep (name → path, deps), softdeps and builtins."""

    dir: Path
    path: dict[str, str] = field(default_factory=dict)
    lines: dict[str, str] = field(default_factory=dict)  # module path → its modules.dep line
    deps: dict[str, list[str]] = field(default_factory=dict)
    soft: dict[str, list[str]] = field(default_factory=dict)
    builtin: set[str] = field(default_factory=set)
    alias: dict[str, list[str]] = field(default_factory=dict)  # plain alias (no wildcard) → modules

    @classmethod
    def load(cls, k: Kernel) -> ModuleIndex:
        """The index of k's module lists, each read inside the kernel's root (`Kernel.module_file`)."""
        idx = cls(k.modules)
        dep = k.module_file("modules.dep")
        if dep is None:
            raise ImageError(f"{k.modules}/modules.dep: no such file")
        for line in dep.decode(errors="replace").splitlines():
            target, sep, rest = line.partition(":")
            if not sep:
                continue
            k.module_file(target)  # only checks the name: absolute or `..` is refused here
            n = norm(target)
            idx.path[n] = target
            idx.lines[target] = line
            idx.deps[n] = [norm(d) for d in rest.split()]
        for line in _lines(k, "modules.softdep"):
            words = line.split()
            if len(words) >= 2 and words[0] == "softdep":
                idx.soft[norm(words[1])] = [norm(w) for w in words[2:] if not w.endswith(":")]
        idx.builtin = {norm(x) for x in _lines(k, "modules.builtin")}
        for line in _lines(k, "modules.alias"):
            words = line.split()
            if len(words) == 3 and words[0] == "alias" and not any(c in words[1] for c in "*?["):
                idx.alias.setdefault(norm(words[1]), []).append(norm(words[2]))
        return idx

    def has(self, name: str) -> bool:
        return name in self.path or name in self.builtin

    def resolve(self, name: str) -> list[str]:
        """A module name, or a softdep's alias (`crypto-crc32c`) through modules.alias, as modules."""
        if name in self.path:
            return [name]
        if name in self.builtin:
            return []
        return [m for m in self.alias.get(name, []) if m in self.path]

    def closure(self, names: list[str]) -> list[str]:
        """Every module needed to load `names`, through modules.dep and softdeps."""
        seen: set[str] = set()
        todo = [n for n in names if n in self.path]
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            todo += [d for d in self.deps.get(n, []) if d in self.path and d not in seen]
            todo += [m for d in self.soft.get(n, []) for m in self.resolve(d) if m not in seen]
        return sorted(seen)


def _lines(k: Kernel, name: str) -> list[str]:
    data = k.module_file(name)
    return data.decode(errors="replace").splitlines() if data is not None else []


def select_modules(k: Kernel, idx: ModuleIndex) -> tuple[list[str], list[str]]:
    """(modules to carry, NIC modules); a kernel lacking a required one is refused."""
    missing = [m for m in REQUIRED if not idx.has(m)]
    if missing:
        raise ImageError(f"kernel {k.version} lacks the modules ramboot needs: {', '.join(missing)}")
    if k.flavor == "generic":
        nics = sorted({n for n, p in idx.path.items() if p.startswith(GENERIC_NIC_DIRS)} |
                      {n for n in CLOUD_NICS if idx.has(n)})
    else:
        nics = [n for n in CLOUD_NICS if idx.has(n)]
    if not any(n not in ("virtio_pci",) for n in nics):
        raise ImageError(f"kernel {k.version} has no NIC driver ramboot knows (looked for {', '.join(CLOUD_NICS)})")
    wanted = list(REQUIRED) + nics + [d for d in DISKS + LIVE_FS + EFI_FS + TPM if idx.has(d)]
    if all(m in idx.path for m in IPMI):
        wanted += IPMI
    return idx.closure(wanted), nics


class Cpio:
    """A newc archive in memory: root-owned, fixed mtime, inode numbers in order."""

    def __init__(self, mtime: int):
        self.mtime = mtime
        self.entries: dict[str, tuple[int, bytes, int]] = {}  # path → (mode, data, rdev)

    def dir(self, path: str, mode: int = 0o755) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            self.entries.setdefault("/".join(parts[:i]), (stat.S_IFDIR | mode, b"", 0))

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._parent(path)
        self.entries[path] = (stat.S_IFREG | mode, data, 0)

    def symlink(self, path: str, target: str) -> None:
        self._parent(path)
        self.entries[path] = (stat.S_IFLNK | 0o777, target.encode(), 0)

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._parent(path)
        self.entries[path] = (stat.S_IFCHR | mode, b"", os.makedev(major, minor))

    def _parent(self, path: str) -> None:
        if "/" in path:
            self.dir(path.rsplit("/", 1)[0])

    def bytes(self) -> bytes:
        out = io.BytesIO()
        for ino, name in enumerate(sorted(self.entries), start=1):
            mode, data, rdev = self.entries[name]
            self._entry(out, ino, name, mode, data, rdev)
        self._entry(out, 0, "TRAILER!!!", 0, b"", 0)
        return out.getvalue()

    def _entry(self, out: io.BytesIO, ino: int, name: str, mode: int, data: builtins.bytes, rdev: int) -> None:
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (ino, mode, 0, 0, nlink, self.mtime if name != "TRAILER!!!" else 0, len(data), 0, 0,
                  os.major(rdev), os.minor(rdev), len(name) + 1, 0)
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.write(name.encode() + b"\0")
        out.write(b"\0" * (-out.tell() % 4))
        out.write(data)
        out.write(b"\0" * (-out.tell() % 4))


def build_initramfs(k: Kernel, out: Path) -> None:
    """Write the compressed initramfs to `out`."""
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise ImageError("busybox-static (/bin/busybox) not found: run `make setup`")
    idx = ModuleIndex.load(k)
    mods, nics = select_modules(k, idx)
    c = Cpio(source_epoch())
    for d in ("dev", "proc", "sys", "run", "tmp", "newroot", "etc/ramboot", "root"):
        c.dir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3, 0o666)
    c.file("bin/busybox", busybox.read_bytes(), 0o755)
    for rel in busybox_applets(busybox):
        c.symlink(rel, "/bin/busybox")
    # curl, for what carries secrets: it checks the server's certificate against the CA
    # in ca.cpio; busybox wget's TLS checks none.
    curl = shutil.which("curl")
    if curl is None:
        raise ImageError("curl not found on the build host: run `make setup`")
    c.file("bin/curl", Path(curl).read_bytes(), 0o755)
    closure = elf_closure(Path(curl))
    for lib in closure:
        c.file(str(lib).lstrip("/"), lib.resolve().read_bytes(), 0o755)
    tpm_files = _carry_tpm_tools(c)
    if IPMI_NO_COLDPLUG in mods:
        _carry_ipmitool(c)
    # What init copies to /run/ramboot/curl/ for the root's own "booted" report (signed by
    # the TPM's attestation key when the node has one: tpm2 and its TCTI too).
    carried = dict.fromkeys(["/bin/curl", *map(str, closure), *tpm_files])
    c.file("etc/ramboot/curl.files", "".join(f"{p}\n" for p in carried).encode())
    data = resources.files("ramboot.images") / "initramfs"
    c.file("init", (data / "init").read_bytes(), 0o755)
    c.file("etc/ramboot/udhcpc.script", (data / "udhcpc.script").read_bytes(), 0o755)
    c.file("etc/ramboot/tpm.sh", (data / "tpm.sh").read_bytes(), 0o644)
    c.file("etc/ramboot/bmc.sh", (data / "bmc.sh").read_bytes(), 0o644)
    c.file("etc/ramboot/nic-modules", ("\n".join(nics) + "\n").encode())
    base = f"lib/modules/{k.version}"
    keep = {idx.path[m] for m in mods}
    for rel in sorted(keep):
        module = k.module_file(rel)
        if module is None:
            raise ImageError(f"kernel {k.version}: modules.dep names {rel}, which is missing")
        c.file(f"{base}/{rel}", module)
    c.file(f"{base}/modules.dep", ("\n".join(ln for t, ln in idx.lines.items() if t in keep) + "\n").encode())
    c.file(f"{base}/modules.alias", _filter_names(k, "modules.alias", set(mods) - {IPMI_NO_COLDPLUG}, "alias", 2))
    c.file(f"{base}/modules.softdep", _filter_names(k, "modules.softdep", set(mods), "softdep", 1))
    for extra in ("modules.builtin", "modules.order"):
        if (table := k.module_file(extra)) is not None:
            c.file(f"{base}/{extra}", table)
    comp = _compressor(k)
    raw = c.bytes()
    proc = subprocess.run(comp, input=raw, capture_output=True)
    if proc.returncode != 0:
        raise ImageError(f"{comp[0]} failed: {proc.stderr.decode(errors='replace').strip()}")
    out.write_bytes(proc.stdout)


def _carry_tpm_tools(c: Cpio) -> list[str]:
    """tpm2-tools (`tpm2 SUBCOMMAND`), its device TCTI and openssl, with their libraries; the
    paths of tpm2, its TCTI and their libraries (the root signs its "booted" report with them)."""
    tpm2, openssl = shutil.which("tpm2"), shutil.which("openssl")
    if tpm2 is None or openssl is None:
        raise ImageError("tpm2 (tpm2-tools) or openssl not found on the build host: run `make setup`")
    tcti = next((p for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu")
                 if (p := Path(d) / TPM_TCTI).exists()), None)
    if tcti is None:
        raise ImageError(f"{TPM_TCTI} (tpm2-tools' device TCTI) not found on the build host: run `make setup`")
    for binary in (Path(tpm2), Path(openssl)):
        c.file(f"bin/{binary.name}", binary.read_bytes(), 0o755)
    c.file(str(tcti).lstrip("/"), tcti.resolve().read_bytes(), 0o755)
    for lib in sorted({*elf_closure(Path(tpm2)), *elf_closure(Path(openssl)), *elf_closure(tcti)}):
        c.file(str(lib).lstrip("/"), lib.resolve().read_bytes(), 0o755)
    return ["/bin/tpm2", str(tcti), *map(str, sorted({*elf_closure(Path(tpm2)), *elf_closure(tcti)}))]


def _carry_ipmitool(c: Cpio) -> None:
    """ipmitool with its libraries, for bmc.sh's `ipmitool lan print` over /dev/ipmi0; a build host
    without it builds an initramfs that reads no BMC (bmc.sh finds no ipmitool and skips)."""
    ipmitool = shutil.which("ipmitool")
    if ipmitool is None:
        return
    c.file("bin/ipmitool", Path(ipmitool).read_bytes(), 0o755)
    for lib in elf_closure(Path(ipmitool)):
        c.file(str(lib).lstrip("/"), lib.resolve().read_bytes(), 0o755)


def elf_closure(binary: Path) -> list[Path]:
    """The shared libraries `binary` loads and its dynamic loader, at the paths the loader
    finds them on this host (ldd: DT_NEEDED, transitively); copied there, they load the same."""
    proc = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageError(f"ldd {binary}: {proc.stderr.strip() or proc.stdout.strip()}")
    out = []
    for ln in proc.stdout.splitlines():
        w = ln.split()
        if "=>" in w and "not" in w:
            raise ImageError(f"{binary}: {ln.strip()}")
        path = w[2] if len(w) > 2 and w[1] == "=>" else w[0] if w and w[0].startswith("/") else None
        if path:
            out.append(Path(path))
    return sorted(set(out))


def _filter_names(k: Kernel, name: str, names: set[str], keyword: str, col: int) -> bytes:
    """Lines `alias PATTERN module` / `softdep module ...` for modules we carry."""
    out = []
    for ln in _lines(k, name):
        w = ln.split()
        if len(w) > col and w[0] == keyword and norm(w[col]) in names:
            out.append(ln)
    return ("\n".join(out) + "\n").encode()


def _compressor(k: Kernel) -> list[str]:
    """zstd when the kernel can unpack it (its config says so), else gzip."""
    if "CONFIG_RD_ZSTD=y" in k.config_text() and shutil.which("zstd"):
        return ["zstd", "-q", "-19", "-T0", "-c"]
    return ["gzip", "-n", "-9", "-c"]
