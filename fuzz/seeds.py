"""Seed corpora for the fuzz targets, from the golden captures and small real inputs."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"


def _tar(members: list[tuple[str, bytes | None, str | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                t.addfile(info)
            elif data is None:
                info.type = tarfile.DIRTYPE
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def seeds(target: str) -> list[bytes]:
    dhcp = [bytes.fromhex(p.read_text()) for p in sorted(GOLDEN.glob("dhcp*/*.hex"))]
    if target == "dhcp_codec":
        return dhcp
    if target == "dhcp_core":
        return [bytes([flags]) + d for d in dhcp for flags in (0, 1, 3)]
    if target == "tftp":
        rrq = b"\x00\x01images/demo/vmlinuz\x00octet\x00blksize\x001468\x00windowsize\x004\x00tsize\x000\x00"
        return [b"\x05" + rrq + b"\x01\x00\x04\x00\x00\x01\x00\x04\x00\x01",
                b"\x03\x00\x01f\x00octet\x00" + b"\x01\x00\x04\x00\x01"]
    if target == "http_range":
        return [b"\x00\x10\x00bytes=0-99\n\"abc\"\n\n", b"\x00\x00\x10bytes=-5\n\n*\n", b"\x01\x00\x00bytes=5-\n"]
    if target == "tar_layer":
        return [_tar([("etc", None, None), ("etc/hosts", b"127.0.0.1 x\n", None), ("etc/.wh.old", b"", None),
                      ("bin", None, None), ("bin/sh", None, "busybox")]),
                _tar([("a/.wh..wh..opq", b"", None), ("a/b", b"x", None)])]
    if target == "config":
        doc = (ROOT / "docs" / "config.md").read_text()
        blocks = [b.split("```", 1)[0] for b in doc.split("```toml\n")[1:]]
        return [b.encode() for b in blocks] + [
            b'data_dir = "/tmp/x"\n[dhcp]\nmode = "full"\nrange = "10.0.0.10-10.0.0.20"\n[boot]\nprofile = "p"\n']
    raise KeyError(target)
