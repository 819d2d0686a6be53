"""Content-addressed files: `DATA/blobs/sha256/<hex>`, hard-linked into image directories.

Two images with the same kernel (or a pulled image that is already here under
another name) cost its bytes once: each image file is a hard link to the blob
named by its sha256. A blob is only ever made from a file whose sha256 was just
checked, so its name is its content. Blobs no image links to any more (link
count 1) are removed by `gc()`.
"""

from __future__ import annotations

import os
from pathlib import Path

from .manifest import images_dir, load_manifest


def blob_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "blobs" / "sha256"


def blob_path(data_dir: Path, sha256: str) -> Path:
    return blob_dir(data_dir) / sha256


def have(data_dir: Path, sha256: str, size: int) -> Path | None:
    """The blob for this sha256, if it is here at this size."""
    p = blob_path(data_dir, sha256)
    try:
        return p if p.stat().st_size == size else None
    except OSError:
        return None


def store(data_dir: Path, path: Path, sha256: str) -> Path:
    """Make `path` (whose sha256 the caller just checked) the blob for `sha256`, or, when
    that blob exists already, make `path` a hard link to it; returns the blob."""
    d = blob_dir(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    blob = d / sha256
    try:
        if blob.exists():
            if not os.path.samefile(blob, path):
                tmp = path.with_name(f".{path.name}.link")
                tmp.unlink(missing_ok=True)
                os.link(blob, tmp)
                os.replace(tmp, path)  # the duplicate's bytes are freed
        else:
            os.link(path, blob)
    except OSError:
        pass  # another file system (or no hard links): the image keeps its own copy
    return blob


def adopt(data_dir: Path, name: str) -> None:
    """Put an installed image's files into the blob store (after a build or a pull)."""
    m = load_manifest(data_dir, name)
    d = images_dir(data_dir) / name
    for fname, entry in m.files.items():
        p = d / fname
        if p.is_file() and p.stat().st_size == entry.size:
            store(data_dir, p, entry.sha256)


def gc(data_dir: Path) -> int:
    """Remove blobs that no image links to; returns how many."""
    n = 0
    d = blob_dir(data_dir)
    for p in d.iterdir() if d.is_dir() else []:
        try:
            if p.stat().st_nlink == 1:
                p.unlink()
                n += 1
        except OSError:
            continue
    return n
