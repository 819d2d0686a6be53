"""Make a virtual environment built at a staging path work at its installed path, byte for byte the same
whatever the staging path was: scripts and pyvenv.cfg name the installed path, RECORD hashes match the
rewritten scripts, and direct_url.json (the build's temporary source path) is gone.

Usage: python relocate_venv.py STAGED_VENV INSTALLED_PATH
"""

from __future__ import annotations

import base64
import hashlib
import sys
from pathlib import Path


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def relocate(venv: Path, target: str) -> None:
    old = str(venv).encode()
    for f in sorted((venv / "bin").iterdir()):
        if f.is_file() and not f.is_symlink():
            data = f.read_bytes()
            if old in data:
                f.write_bytes(data.replace(old, target.encode()))
    cfg = venv / "pyvenv.cfg"
    cfg.write_text("".join(line for line in cfg.read_text().splitlines(keepends=True)
                           if not line.startswith("command = ")))
    for dist in sorted(venv.glob("lib/python3*/site-packages/*.dist-info")):
        (dist / "direct_url.json").unlink(missing_ok=True)
        record = dist / "RECORD"
        if not record.exists():
            continue
        lines = []
        for line in record.read_text().splitlines():
            path, _, _ = line.rpartition(",")[0].rpartition(",")
            if path.endswith("direct_url.json"):
                continue
            f = (dist.parent / path).resolve() if path else None
            if f is not None and f.is_file() and line.split(",")[1]:
                data = f.read_bytes()
                line = f"{path},{record_hash(data)},{len(data)}"
            lines.append(line)
        record.write_text("\n".join(lines) + "\n")
    left = [str(p) for p in venv.rglob("*") if p.is_file() and not p.is_symlink() and old in p.read_bytes()]
    if left:
        sys.exit(f"relocate: the staging path is still in {', '.join(left[:5])}")


if __name__ == "__main__":
    relocate(Path(sys.argv[1]), sys.argv[2])
