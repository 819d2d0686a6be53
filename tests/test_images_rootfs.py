"""Root filesystem sources: every kind, layer semantics, hostile archives, reproducibility.

The squashfs each source produces is read back with `unsquashfs -lln`, so the
assertions are about what a node would really see.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from rich.console import Console

from ramboot.images.errors import ImageError
from ramboot.images.rootfs import Limits, make_squashfs, parse_source, populate
from test_images_build import IMAGE_CLI

QUIET = Console(file=io.StringIO())
DEVICES = Limits(allow_devices=True)  # LOWER carries a device node and a FIFO

for tool in ("mksquashfs", "unsquashfs", "zstd"):
    if shutil.which(tool) is None:
        raise RuntimeError(f"{tool} is missing: run `make setup`")


# --- helpers: craft layers, read images back ---------------------------------


def tar_bytes(entries: list[tuple], gz: bool = False) -> bytes:
    """entries: (name, kind, payload, extra) with kind in file|dir|sym|link|chr|blk|fifo."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, payload, *extra in entries:
            opts = extra[0] if extra else {}
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_600_000_000
            ti.uid, ti.gid = opts.get("owner", (0, 0))
            ti.mode = opts.get("mode", 0o755 if kind == "dir" else 0o644)
            data = None
            if kind == "file":
                data = payload.encode() if isinstance(payload, str) else payload
                ti.size = len(data)
            elif kind == "dir":
                ti.type = tarfile.DIRTYPE
            elif kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, payload
            elif kind == "link":
                ti.type, ti.linkname = tarfile.LNKTYPE, payload
            elif kind in ("chr", "blk"):
                ti.type = tarfile.CHRTYPE if kind == "chr" else tarfile.BLKTYPE
                ti.devmajor, ti.devminor = payload
            elif kind == "fifo":
                ti.type = tarfile.FIFOTYPE
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if gz else raw


LOWER = [
    ("etc", "dir", None),
    ("etc/a", "file", "a"),
    ("etc/b", "file", "b"),
    ("opq", "dir", None),
    ("opq/old", "file", "old"),
    ("opq/sub", "dir", None),
    ("opq/sub/deep", "file", "deep"),
    ("bin", "dir", None),
    ("bin/tool", "file", "#!/bin/sh\n", {"mode": 0o4755, "owner": (1234, 5678)}),
    ("bin/su", "file", "#!/bin/sh\n", {"mode": 0o4755}),
    ("bin/tool-hard", "link", "bin/tool"),
    ("bin/tool-sym", "sym", "tool"),
    ("dev", "dir", None),
    ("dev/null", "chr", (1, 3), {"mode": 0o666}),
    ("run", "dir", None),
    ("run/fifo", "fifo", None),
    ("lib", "sym", "usr/lib"),
    ("usr", "dir", None),
    ("usr/lib", "dir", None),
]
UPPER = [
    ("etc/.wh.a", "file", ""),
    ("opq", "dir", None),
    ("opq/new", "file", "new"),
    ("opq/.wh..wh..opq", "file", ""),
    ("lib/libx.so", "file", "x"),  # through the lower layer's lib -> usr/lib symlink
    ("etc/b", "file", "b2"),
]


def listing(img: Path) -> dict[str, str]:
    """path -> `unsquashfs -lln` line (mode, owner, size or device, path)."""
    out = subprocess.run(["unsquashfs", "-lln", str(img)], capture_output=True, text=True, check=True).stdout
    res = {}
    for line in out.splitlines():
        if " squashfs-root" not in line:
            continue
        path = line.split(" squashfs-root", 1)[1].split(" -> ")[0] or "/"
        res[path] = line
    return res


def cat(img: Path, path: str, tmp: Path) -> bytes:
    dest = tmp / ("x" + hashlib.sha1(path.encode()).hexdigest()[:8])
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(dest), str(img), path.lstrip("/")], check=True,
                   capture_output=True)
    return (dest / path.lstrip("/")).read_bytes()


def extract(img: Path, tmp: Path) -> Path:
    """The whole image unpacked by unsquashfs, which recreates hard links as links to one inode."""
    dest = tmp / f"tree{len(list(tmp.glob('tree*')))}"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(dest), str(img)], check=True, capture_output=True)
    return dest


def assert_one_inode(img: Path, tmp: Path, a: str, b: str) -> None:
    """a and b are one file in the image: one inode with a link count of 2, not two copies."""
    tree = extract(img, tmp)
    sa, sb = os.lstat(tree / a.lstrip("/")), os.lstat(tree / b.lstrip("/"))
    assert stat.S_ISREG(sa.st_mode) and stat.S_ISREG(sb.st_mode)
    assert sa.st_ino == sb.st_ino, f"{a} and {b} are two files, not one inode"
    assert sa.st_nlink == sb.st_nlink == 2
    # squashfs itself stores one inode for the two names: every other entry has its own
    out = subprocess.run(["unsquashfs", "-stat", str(img)], capture_output=True, text=True, check=True).stdout
    inodes = int(re.search(r"^Number of inodes (\d+)$", out, re.M).group(1))
    assert inodes == len(listing(img)) - 1


def build(src: str, tmp: Path, limits: Limits | None = None, console: Console = QUIET) -> Path:
    work = tmp / f"work{len(list(tmp.glob('work*')))}"
    work.mkdir()
    tree = populate(parse_source(src), work, console, limits)
    out = work / "rootfs.squashfs"
    make_squashfs(tree, out, QUIET)
    return out


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def docker_archive(path: Path, layers: list[bytes]) -> Path:
    with tarfile.open(path, "w") as tf:
        names = []
        for i, data in enumerate(layers):
            name = f"{i:064x}/layer.tar"
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
            names.append(name)
        man = json.dumps([{"Config": "config.json", "RepoTags": ["t:latest"], "Layers": names}]).encode()
        ti = tarfile.TarInfo("manifest.json")
        ti.size = len(man)
        tf.addfile(ti, io.BytesIO(man))
    return path


def oci_layout(path: Path, layers: list[tuple[bytes, str]]) -> Path:
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        h = hashlib.sha256(data).hexdigest()
        (blobs / h).write_bytes(data)
        return "sha256:" + h

    descs = [{"mediaType": mt, "digest": put(d), "size": len(d)} for d, mt in layers]
    cfg = put(b'{"architecture":"amd64","os":"linux"}')
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": cfg, "size": 10}, "layers": descs}).encode()
    mdig = put(manifest)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdig, "size": len(manifest),
         "platform": {"architecture": "amd64", "os": "linux"}}]}))
    return path


def assert_layered(img: Path, tmp: Path) -> None:
    ls = listing(img)
    assert not [p for p in ls if "/.wh." in p], "a whiteout reached the image"
    assert "/etc/a" not in ls  # whiteout
    assert cat(img, "/etc/b", tmp) == b"b2"  # replaced by the upper layer
    assert "/opq/old" not in ls and "/opq/sub" not in ls  # opaque directory
    assert cat(img, "/opq/new", tmp) == b"new"
    assert cat(img, "/usr/lib/libx.so", tmp) == b"x"  # written through an in-root symlink
    assert ls["/lib"].startswith("lrwxrwxrwx")
    assert_metadata(ls, layered=True)


def assert_metadata(ls: dict[str, str], layered: bool = False) -> None:
    """Modes, owners, links, nodes; a layer's setuid file not owned by root loses the bit."""
    tool = ls["/bin/tool"].split()
    assert tool[0] == ("-rwxr-xr-x" if layered else "-rwsr-xr-x") and tool[1] == "1234/5678"
    if layered:
        assert ls["/bin/su"].split()[:2] == ["-rwsr-xr-x", "0/0"]
    assert ls["/bin/tool-sym"].startswith("lrwxrwxrwx")
    assert ls["/dev/null"].startswith("crw-rw-rw-") and "1,  3" in ls["/dev/null"].replace("1,3", "1,  3")
    assert ls["/run/fifo"].startswith("prw-r--r--")


# --- sources -----------------------------------------------------------------


def test_builtin_root_has_busybox_init(tmp_path: Path) -> None:
    img = build("", tmp_path)
    ls = listing(img)
    for p in ("/bin/busybox", "/sbin/init", "/bin/sh", "/usr/bin/wget", "/etc/inittab", "/etc/init.d/rcS",
              "/usr/lib/ramboot/booted", "/proc", "/sys", "/dev", "/run"):
        assert p in ls, p
    assert b"ramboot: booted" in cat(img, "/usr/lib/ramboot/booted", tmp_path)
    assert img.stat().st_size < 4 * 1024 * 1024


def test_directory_source_keeps_links_devices_modes_owners(tmp_path: Path) -> None:
    d = tmp_path / "root"
    (d / "bin").mkdir(parents=True)
    (d / "dev").mkdir()
    (d / "run").mkdir()
    tool = d / "bin/tool"
    tool.write_text("#!/bin/sh\n")
    os.chown(tool, 1234, 5678)
    os.chmod(tool, 0o4755)
    (d / "bin/su").write_text("#!/bin/sh\n")
    os.chmod(d / "bin/su", 0o4755)
    os.link(tool, d / "bin/tool-hard")
    os.symlink("tool", d / "bin/tool-sym")
    os.mknod(d / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(d / "dev/null", 0o666)
    os.mkfifo(d / "run/fifo", 0o644)
    os.chmod(d / "run/fifo", 0o644)
    img = build(str(d), tmp_path)
    ls = listing(img)
    assert_metadata(ls)
    assert_one_inode(img, tmp_path, "/bin/tool", "/bin/tool-hard")  # a hard link stays one inode


@pytest.mark.parametrize("gz", [False, True], ids=["tar", "tar.gz"])
def test_tarball_source(tmp_path: Path, gz: bool) -> None:
    p = tmp_path / ("root.tar.gz" if gz else "root.tar")
    p.write_bytes(tar_bytes(LOWER, gz=gz))
    img = build(str(p), tmp_path, DEVICES)
    ls = listing(img)
    assert_metadata(ls, layered=True)
    assert cat(img, "/etc/a", tmp_path) == b"a"
    assert_one_inode(img, tmp_path, "/bin/tool", "/bin/tool-hard")  # the tar hard link stays one inode


def test_docker_archive_layers_whiteouts_opaque(tmp_path: Path) -> None:
    arc = docker_archive(tmp_path / "img.tar", [tar_bytes(LOWER), tar_bytes(UPPER)])
    img = build(f"docker-archive:{arc}", tmp_path, DEVICES)
    assert_layered(img, tmp_path)


def test_oci_layout_layers_gzip_and_zstd(tmp_path: Path) -> None:
    upper = subprocess.run(["zstd", "-q", "-c"], input=tar_bytes(UPPER), capture_output=True, check=True).stdout
    lay = oci_layout(tmp_path / "oci", [
        (tar_bytes(LOWER, gz=True), "application/vnd.oci.image.layer.v1.tar+gzip"),
        (upper, "application/vnd.oci.image.layer.v1.tar+zstd"),
    ])
    img = build(f"oci:{lay}", tmp_path, DEVICES)
    assert_layered(img, tmp_path)


def test_oci_corrupt_blob_is_refused(tmp_path: Path) -> None:
    lay = oci_layout(tmp_path / "oci", [(tar_bytes(LOWER), "application/vnd.oci.image.layer.v1.tar")])
    manifest = next(p for p in (lay / "blobs/sha256").iterdir() if b'"layers"' in p.read_bytes())
    layer_digest = json.loads(manifest.read_bytes())["layers"][0]["digest"].split(":")[1]
    blob = lay / "blobs/sha256" / layer_digest
    blob.write_bytes(tar_bytes(LOWER[:3]))
    with pytest.raises(ImageError, match="corrupt"):
        build(f"oci:{lay}", tmp_path, DEVICES)


# --- hostile layers ------------------------------------------------------------

HOSTILE = {
    "absolute": [("/tmp/rbi-pwned", "file", "x")],
    "dotdot": [("etc", "dir", None), ("etc/../../rbi-pwned", "file", "x")],
    "symlink-escape": [("evil", "sym", "../../../../../../.."), ("evil/tmp/rbi-pwned", "file", "x")],
    "symlink-escape-later-layer": [("evil", "sym", "../.."), ("evil/rbi-pwned", "file", "x")],
    "hardlink-out": [("h", "link", "../../etc/passwd")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("kind", ["docker-archive", "oci", "tar"])
def test_hostile_member_is_refused(tmp_path: Path, case: str, kind: str) -> None:
    entries = HOSTILE[case]
    if case == "symlink-escape-later-layer":
        layers = [tar_bytes(entries[:1]), tar_bytes(entries[1:])]
    else:
        layers = [tar_bytes(entries)]
    if kind == "docker-archive":
        src = f"docker-archive:{docker_archive(tmp_path / 'a.tar', layers)}"
    elif kind == "oci":
        src = f"oci:{oci_layout(tmp_path / 'oci', [(x, 'application/vnd.oci.image.layer.v1.tar') for x in layers])}"
    else:
        if len(layers) > 1:
            layers = [tar_bytes(entries)]
        (tmp_path / "a.tar").write_bytes(layers[0])
        src = str(tmp_path / "a.tar")
    with pytest.raises(ImageError, match="hostile|escapes|out of the root|'\\.\\.'"):
        build(src, tmp_path)
    assert not Path("/tmp/rbi-pwned").exists()
    assert not (tmp_path / "rbi-pwned").exists()


def test_absolute_symlink_resolves_inside_the_root(tmp_path: Path) -> None:
    """`lib -> /usr/lib` is the image's own /usr/lib, never the host's."""
    t = tmp_path / "a.tar"
    t.write_bytes(tar_bytes([("usr", "dir", None), ("usr/lib", "dir", None), ("lib", "sym", "/usr/lib"),
                             ("lib/rbi-inside", "file", "in")]))
    img = build(str(t), tmp_path)
    assert cat(img, "/usr/lib/rbi-inside", tmp_path) == b"in"
    assert not Path("/usr/lib/rbi-inside").exists()


def test_links_never_write_outside_the_root(tmp_path: Path) -> None:
    """A file over a planted symlink replaces the link; a hard link to an escaping symlink is that symlink."""
    host = tmp_path / "host-file"
    host.write_text("host")
    t = tmp_path / "a.tar"
    t.write_bytes(tar_bytes([("over", "sym", str(host)), ("over", "file", "layer"),
                             ("out", "sym", str(host)), ("out-hard", "link", "out"),
                             ("up", "sym", "../../../../../../.." + str(host)), ("up-hard", "link", "up")]))
    img = build(str(t), tmp_path)
    ls = listing(img)
    assert cat(img, "/over", tmp_path) == b"layer" and ls["/over"].startswith("-rw-r--r--")
    assert ls["/out-hard"].startswith("lrwxrwxrwx") and ls["/up-hard"].startswith("lrwxrwxrwx")
    assert host.read_text() == "host" and host.stat().st_nlink == 1


# --- hostile layers: budgets, device nodes, setuid -----------------------------------


def gnu_sparse_tar(tmp: Path, fmt: str, size: int) -> Path:
    """GNU tar's own sparse member (`tar -S`): a few hundred bytes that expand to `size`."""
    d = tmp / f"sparse-{fmt}"
    d.mkdir()
    with open(d / "big", "wb") as f:
        f.truncate(size)
        f.seek(size)
        f.write(b"tail")
    out = tmp / f"sparse-{fmt}.tar"
    subprocess.run(["tar", "-S", f"--format={fmt}", "-cf", out, "-C", d, "big"], check=True)
    assert out.stat().st_size < 20_000
    return out


@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_a_sparse_member_counts_at_its_real_size(tmp_path: Path, fmt: str) -> None:
    """129 bytes of GNU sparse member became 100 MB on the disk that holds the database."""
    t = gnu_sparse_tar(tmp_path, fmt, 20 << 20)
    with pytest.raises(ImageError, match=r"'big' \(20971524 bytes, sparse\): the layers would write more than "
                                         "10485760 bytes"):
        build(str(t), tmp_path, Limits(max_bytes=10 << 20))
    assert not list(tmp_path.glob("work*/tree/big"))  # refused before a byte of it was written
    img = build(str(t), tmp_path, Limits(max_bytes=30 << 20))
    assert listing(img)["/big"].split()[2] == str((20 << 20) + 4)


def test_the_byte_budget_counts_every_layer(tmp_path: Path) -> None:
    layers = [tar_bytes([(f"f{i}", "file", b"x" * 4096)]) for i in range(4)]
    arc = docker_archive(tmp_path / "img.tar", layers)
    with pytest.raises(ImageError, match="'f3' .* more than 15000 bytes"):
        build(f"docker-archive:{arc}", tmp_path, Limits(max_bytes=15000))


def test_the_entry_budget(tmp_path: Path) -> None:
    t = tmp_path / "a.tar"
    t.write_bytes(tar_bytes([("d", "dir", None)] + [(f"d/{i}", "sym", "x") for i in range(20)]))
    with pytest.raises(ImageError, match="more than 10 entries"):
        build(str(t), tmp_path, Limits(max_entries=10))
    assert "/d/19" in listing(build(str(t), tmp_path, Limits(max_entries=21)))


def test_a_huge_pax_header_is_refused(tmp_path: Path) -> None:
    """A pax record is read into memory whole: one of 2 MiB (or a compressed 10 GB) is a bomb."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("f")
        ti.pax_headers = {"comment": "x" * (2 << 20)}
        tf.addfile(ti, io.BytesIO(b""))
    t = tmp_path / "a.tar"
    t.write_bytes(buf.getvalue())
    with pytest.raises(ImageError, match=r"a \d+-byte name or pax header \(at most 1048576\)"):
        build(str(t), tmp_path)


@pytest.mark.parametrize("kind,entry,what", [
    ("chr", ("dev/mem", "chr", (1, 1)), "a character device node \\(1:1\\)"),
    ("blk", ("dev/sda", "blk", (8, 0)), "a block device node \\(8:0\\)"),
    ("fifo", ("run/fifo", "fifo", None), "a FIFO"),
])
def test_device_nodes_and_fifos_are_refused_unless_asked(tmp_path: Path, kind: str, entry: tuple, what: str) -> None:
    t = tmp_path / "a.tar"
    t.write_bytes(tar_bytes([("dev", "dir", None), ("run", "dir", None), entry]))
    with pytest.raises(ImageError, match=f"refusing '{entry[0]}', {what}: --allow-devices"):
        build(str(t), tmp_path)
    ls = listing(build(str(t), tmp_path, DEVICES))
    assert ls["/" + entry[0]][0] == {"chr": "c", "blk": "b", "fifo": "p"}[kind]


def test_setuid_is_kept_only_on_files_owned_by_root(tmp_path: Path) -> None:
    t = tmp_path / "a.tar"
    t.write_bytes(tar_bytes([
        ("bin", "dir", None),
        ("bin/su", "file", "su", {"mode": 0o4755}),
        ("bin/chage", "file", "chage", {"mode": 0o2755, "owner": (0, 42)}),
        ("bin/mine", "file", "mine", {"mode": 0o4755, "owner": (1000, 1000)}),
        ("bin/gmine", "file", "gmine", {"mode": 0o2711, "owner": (1000, 0)}),
        ("srv", "dir", None, {"mode": 0o2775, "owner": (1000, 1000)}),  # setgid directory: group inheritance
    ]))
    out = io.StringIO()
    ls = listing(build(str(t), tmp_path, console=Console(file=out, width=200)))
    assert ls["/bin/su"].split()[:2] == ["-rwsr-xr-x", "0/0"]
    assert ls["/bin/chage"].split()[:2] == ["-rwxr-sr-x", "0/42"]
    assert ls["/bin/mine"].split()[:2] == ["-rwxr-xr-x", "1000/1000"]
    assert ls["/bin/gmine"].split()[:2] == ["-rwx--x--x", "1000/0"]
    assert ls["/srv"].split()[0] == "drwxrwsr-x"
    assert "took the setuid/setgid bits off 2 file(s) not owned by root" in out.getvalue()
    w = tmp_path / "w.tar"
    w.write_bytes(tar_bytes([("bin", "dir", None), ("bin/ww", "file", "x", {"mode": 0o4777})]))
    with pytest.raises(ImageError, match="'bin/ww': a world-writable setuid/setgid file"):
        build(str(w), tmp_path)


def test_cli_budget_is_one_line(tmp_path: Path) -> None:
    t = gnu_sparse_tar(tmp_path, "gnu", 20 << 20)
    data = tmp_path / "d"
    proc = subprocess.run([*IMAGE_CLI, "build", "x", "--rootfs", str(t), "--max-root-size", "10M", "--data-dir",
                           str(data)], capture_output=True, text=True)
    err = proc.stderr.strip()
    assert proc.returncode == 1 and len(err.splitlines()) == 1 and "(--max-root-size raises it)" in err, err
    assert [p.name for p in (data / "images").iterdir()] == []


# --- reproducibility ---------------------------------------------------------------


def test_same_input_same_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = tmp_path / "r.tar.gz"
    t.write_bytes(tar_bytes(LOWER, gz=True))
    arc = docker_archive(tmp_path / "img.tar", [tar_bytes(LOWER), tar_bytes(UPPER)])
    for src in (str(t), f"docker-archive:{arc}", ""):
        assert sha(build(src, tmp_path, DEVICES)) == sha(build(src, tmp_path, DEVICES)), src
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a = build(str(t), tmp_path, DEVICES)
    assert sha(a) == sha(build(str(t), tmp_path, DEVICES))
    assert "2023-11-14" in listing(a)["/etc/a"]


# --- bad sources -----------------------------------------------------------------------


@pytest.mark.parametrize("src,msg", [
    ("/nonexistent/rbi-root", "no such file"),
    ("ftp:thing", "unknown scheme 'ftp:'"),
    ("oci:/nonexistent/rbi", "no such file"),
    ("docker-archive:", "nothing after"),
])
def test_bad_source_is_one_clear_error(src: str, msg: str) -> None:
    with pytest.raises(ImageError, match=msg):
        parse_source(src)


def test_not_a_tarball(tmp_path: Path) -> None:
    p = tmp_path / "junk.tar"
    p.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ImageError, match="not a directory or a tar archive"):
        parse_source(str(p))


def test_docker_archive_without_manifest(tmp_path: Path) -> None:
    p = tmp_path / "a.tar"
    p.write_bytes(tar_bytes(LOWER))
    with pytest.raises(ImageError, match="manifest.json"):
        build(f"docker-archive:{p}", tmp_path)
