"""Live media the tests make themselves, the way the distributions make theirs.

- A Fedora-style LiveOS squashfs: an ext4 filesystem image made with
  `mkfs.ext4 -d` from a root tree, as `LiveOS/rootfs.img` inside an xz squashfs.
- A Debian-Live-style ISO: `live/filesystem.squashfs` (xz, as live-build makes
  it) on an ISO 9660 image with Rock Ridge and Joliet, written by xorriso.
- Tiny ISOs in the three distributions' layouts, written with pycdlib, for the
  finder's unit tests (their squashfs files are small real ones).

The root trees are ramboot's built-in busybox root plus a marker file and an
rcS line that prints the mounts, so a VM's console shows which layer it runs on.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

from ramboot.images.rootfs import builtin_tree

MARKER = "etc/ramboot-live-test"


def root_tree(dest: Path, label: str) -> Path:
    """The built-in busybox root, marked with `label`, printing its mounts at boot."""
    dest.mkdir(parents=True)
    builtin_tree(dest)
    (dest / MARKER).write_text(label + "\n")
    rcs = dest / "etc/init.d/rcS"
    text = rcs.read_text()
    hook = (f'echo "live-test: marker $(cat /{MARKER})" > /dev/console\n'
            "grep -E ' /run/initramfs/ramboot/(lower|squashfs) ' /proc/mounts | sed 's/^/live-test: mount /' > /dev/console\n"
            "cut -d' ' -f1 /proc/modules | sed 's/^/live-test: module /' > /dev/console\n")
    rcs.write_text(text.replace("/usr/lib/ramboot/booted", hook + "/usr/lib/ramboot/booted"))
    return dest


def mksquashfs(tree: Path, out: Path, comp: str = "xz") -> Path:
    subprocess.run(["mksquashfs", str(tree), str(out), "-noappend", "-comp", comp, "-quiet", "-no-progress",
                    "-all-root"], check=True, capture_output=True)
    return out


def ext4_image(tree: Path, out: Path, size_mb: int = 24) -> Path:
    """An ext4 filesystem image holding `tree`, made without mounting anything (mkfs.ext4 -d)."""
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "ramboot-live", "-d", str(tree), str(out), f"{size_mb}M"],
                   check=True, capture_output=True)
    return out


def liveos_squashfs(work: Path, inner: str = "rootfs.img", label: str = "liveos") -> Path:
    """A squashfs whose only content is LiveOS/<inner>, an ext4 image of a marked root."""
    tree = root_tree(work / "root", label)
    wrap = work / "wrap" / "LiveOS"
    wrap.mkdir(parents=True)
    ext4_image(tree, wrap / inner)
    return mksquashfs(work / "wrap", work / "squashfs.img")


def xorriso_iso(content: Path, out: Path, volid: str = "d-live 12 test") -> Path:
    """An ISO 9660 image of `content` with Rock Ridge and Joliet, as Debian's live-build writes them."""
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-V", volid, "-o", str(out), str(content)],
                   check=True, capture_output=True)
    return out


def debian_live_iso(work: Path, label: str = "debian-live") -> Path:
    tree = root_tree(work / "root", label)
    top = work / "iso"
    (top / "live").mkdir(parents=True)
    mksquashfs(tree, top / "live" / "filesystem.squashfs")
    (top / "live" / "vmlinuz").write_bytes(b"not a kernel")  # what a live ISO has beside it
    (top / "isolinux").mkdir()
    (top / "isolinux" / "isolinux.cfg").write_text("default live\n")
    return xorriso_iso(top, work / "debian-live.iso")


def small_squashfs(work: Path, name: str, payload: str) -> bytes:
    """The bytes of a tiny real squashfs holding one file saying `payload`."""
    t = work / f"sq-{name}"
    t.mkdir(parents=True)
    (t / "hello").write_text(payload)
    out = mksquashfs(t, work / f"{name}.sq", comp="gzip")
    data = out.read_bytes()
    shutil.rmtree(t)
    out.unlink()
    return data


def pycdlib_iso(out: Path, files: dict[str, bytes], rock_ridge: bool = True, joliet: bool = True,
                level: int = 3) -> Path:
    """An ISO with `files` ({"casper/minimal.squashfs": bytes}), names in the trees asked for.

    With level 1 and no Rock Ridge or Joliet, the only names are ISO 9660's 8.3 ones.
    """
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=level, rock_ridge="1.09" if rock_ridge else None, joliet=3 if joliet else None,
            vol_ident="TEST")

    def iso_name(part: str, is_dir: bool) -> str:
        up = "".join(c if c.isalnum() or c == "." else "_" for c in part.upper())
        if is_dir:
            return up.replace(".", "_")[: 8 if level == 1 else 31]
        stem, dot, ext = up.rpartition(".")
        if not dot:
            stem, ext = up, ""
        stem = stem.replace(".", "_")
        if level == 1:
            stem, ext = stem[:8], ext[:3]
        return f"{stem}.{ext};1"

    made: set[str] = set()
    for rel, data in files.items():
        parts = rel.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d in made:
                continue
            made.add(d)
            isop = "/" + "/".join(iso_name(p, True) for p in parts[:i])
            iso.add_directory(isop, rr_name=parts[i - 1] if rock_ridge else None,
                              joliet_path="/" + d if joliet else None)
        isop = "/" + "/".join(iso_name(p, j < len(parts) - 1) for j, p in enumerate(parts))
        iso.add_fp(io.BytesIO(data), len(data), isop, rr_name=parts[-1] if rock_ridge else None,
                   joliet_path="/" + rel if joliet else None)
    iso.write(str(out))
    iso.close()
    return out
