"""`ramboot image pull NAME --from URL`: copy an image from another ramboot server, by hash.

The source's `image.toml` says every file's size and sha256. Each file already
here as a blob (`images/blobs.py`) is linked, not fetched; every other is
streamed to a temporary file while it is hashed, and refused unless size and
sha256 match. Only a whole, verified image is moved into `DATA/images/NAME` (one
rename), and a running server offers it to nodes only after hashing it itself
(`server/cluster.py`, `ImageCheck`).

The manifest is the trust anchor, so it is validated (`manifest.load_manifest`: a
sha256 is 64 hex digits, a file name a plain name) and fetched over HTTPS: the
source's certificate must chain to `--ca FILE`, by default this server's own CA
(`DATA/tls/ca.pem`, which every server of one cluster shares), else the system's
store. Plain `http://` needs `--insecure-http`: the sha256 then still catches
corruption, but anyone on the path could hand out a manifest of their own.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from http.client import HTTPMessage
from pathlib import Path
from typing import IO

from . import blobs
from .build import check_name
from .errors import ImageError
from .manifest import MANIFEST, Manifest, ManifestError, images_dir, load_manifest


class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    """A redirect may not leave HTTPS: the manifest's authenticity would go with it."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: HTTPMessage, newurl: str) -> urllib.request.Request | None:
        if req.full_url.startswith("https:") and not newurl.startswith("https:"):
            raise ImageError(f"{req.full_url}: redirected to {newurl}, off HTTPS: refused")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def opener(data_dir: Path, base: str, ca: Path | None, insecure_http: bool) -> urllib.request.OpenerDirector:
    """What fetches from `base`: HTTPS checked against `ca` (default DATA/tls/ca.pem if
    present, else the system's store), plain HTTP only when asked for by name."""
    scheme = urllib.parse.urlsplit(base).scheme
    if scheme == "http" and not insecure_http:
        raise ImageError(f"--from {base}: plain HTTP gives no authenticity (anyone on the path can hand out "
                         "a manifest); use https:// or give --insecure-http")
    if scheme not in ("http", "https"):
        raise ImageError(f"--from: expected https://HOST[:PORT], got {base!r}")
    if ca is None and (Path(data_dir) / "tls/ca.pem").is_file():
        ca = Path(data_dir) / "tls/ca.pem"
    try:
        ctx = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    except (OSError, ssl.SSLError) as e:
        raise ImageError(f"--ca {ca}: not a readable PEM CA certificate ({getattr(e, 'strerror', None) or e})") \
            from None
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx), _NoDowngrade())


def _get(op: urllib.request.OpenerDirector, url: str, timeout: float) -> IO[bytes]:
    try:
        r: IO[bytes] = op.open(url, timeout=timeout)  # typeshed: Any (an HTTPResponse here)
        return r
    except urllib.error.HTTPError as e:
        raise ImageError(f"{url}: HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        why = getattr(e, "reason", e)
        if isinstance(why, ssl.SSLCertVerificationError):
            why = f"the server's certificate is not trusted ({why.verify_message}): give --ca FILE"
        raise ImageError(f"{url}: {why}") from None


def pull_image(data_dir: Path, name: str, source: str, timeout: float = 60.0,
               progress: Callable[[str], None] | None = None, ca: Path | None = None,
               insecure_http: bool = False) -> tuple[Manifest, int, int]:
    """Copy image `name` from the server at `source` (https://HOST[:PORT]); returns
    (manifest, bytes fetched, bytes reused from blobs already here)."""
    check_name(name)
    base = source.rstrip("/")
    op = opener(data_dir, base, ca, insecure_http)
    say = progress or (lambda _m: None)
    top = images_dir(data_dir)
    top.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".pull-{name}-", dir=top))
    fetched = reused = 0
    try:
        out = images_dir(work) / name  # load_manifest reads WORK/images/NAME/image.toml
        out.mkdir(parents=True)
        with _get(op, f"{base}/images/{name}/{MANIFEST}", timeout) as r:
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
            with _get(op, f"{base}/images/{name}/{urllib.parse.quote(fname)}", timeout) as r, open(dest, "wb") as f:
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
