"""`ramboot image pull NAME --from URL`: copy an image from another ramboot server, by hash.

The source's `image.toml` says every file's size and sha256. Each file already
here as a blob (`images/blobs.py`) is linked, not fetched; every other is
streamed to a temporary file while it is hashed, and refused unless size and
sha256 match. Only a whole, verified image is moved into `DATA/images/NAME` (one
rename), and a running server offers it to nodes only after hashing it itself
(`server/cluster.py`, `ImageCheck`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from . import blobs
from .build import check_name
from .errors import ImageError
from .manifest import MANIFEST, Manifest, ManifestError, images_dir, load_manifest


def _get(url: str, timeout: float):
    try:
        return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (http only, checked below)
    except urllib.error.HTTPError as e:
        raise ImageError(f"{url}: HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ImageError(f"{url}: {getattr(e, 'reason', e)}") from None


def pull_image(data_dir: Path, name: str, source: str, timeout: float = 60.0,
               progress: Callable[[str], None] | None = None) -> tuple[Manifest, int, int]:
    """Copy image `name` from the server at `source` (http://HOST[:PORT]); returns
    (manifest, bytes fetched, bytes reused from blobs already here)."""
    check_name(name)
    base = source.rstrip("/")
    if urllib.parse.urlsplit(base).scheme not in ("http", "https"):
        raise ImageError(f"--from: expected http://HOST[:PORT], got {source!r}")
    say = progress or (lambda _m: None)
    top = images_dir(data_dir)
    top.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".pull-{name}-", dir=top))
    fetched = reused = 0
    try:
        out = images_dir(work) / name  # load_manifest reads WORK/images/NAME/image.toml
        out.mkdir(parents=True)
        with _get(f"{base}/images/{name}/{MANIFEST}", timeout) as r:
            (out / MANIFEST).write_bytes(r.read(1 << 20))
        try:
            m = load_manifest(work, name)
        except ManifestError as e:
            raise ImageError(f"{base}: image {name}: {e}") from None
        if m.name != name:
            raise ImageError(f"{base}: the manifest of {name} names {m.name!r}")
        for fname, entry in sorted(m.files.items()):
            if "/" in fname or fname.startswith("."):
                raise ImageError(f"{base}: image {name}: bad file name {fname!r} in its manifest")
            dest = out / fname
            blob = blobs.have(data_dir, entry.sha256, entry.size)
            if blob is not None:
                try:
                    os.link(blob, dest)
                except OSError:
                    shutil.copyfile(blob, dest)
                reused += entry.size
                say(f"{fname}: have it (sha256 {entry.sha256[:16]}…)")
                continue
            h = hashlib.sha256()
            n = 0
            with _get(f"{base}/images/{name}/{urllib.parse.quote(fname)}", timeout) as r, open(dest, "wb") as f:
                while chunk := r.read(1 << 20):
                    h.update(chunk)
                    f.write(chunk)
                    n += len(chunk)
                f.flush()
                os.fsync(f.fileno())
            if n != entry.size:
                raise ImageError(f"{name}/{fname}: got {n} bytes from {base}, the manifest says {entry.size}")
            if h.hexdigest() != entry.sha256:
                raise ImageError(f"{name}/{fname}: sha256 {h.hexdigest()} from {base}, the manifest says "
                                 f"{entry.sha256}: refused")
            blobs.store(data_dir, dest, entry.sha256)
            fetched += n
            say(f"{fname}: {n} bytes, sha256 ok")
        final = top / name
        if final.exists():
            os.rename(final, work / "old")
        os.rename(out, final)
        return m, fetched, reused
    finally:
        shutil.rmtree(work, ignore_errors=True)
