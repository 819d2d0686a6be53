"""The image catalog: each built image's manifest, read again only when its image.toml changes.

One per server process, handed to whoever needs an image's facts: the policy
(`policy.Booter`, whose decisions name the root's sha256 on the command line),
HTTP (strong ETags, which files a peer may seed) and the overlays (does the image
have cloud-init). None of them keeps manifests of its own.

Asking is one stat, not a parse. A view made by `with_ttl()` (the DHCP server's)
trusts what it read, a manifest or its absence, for that many seconds without a
stat, and shares the parses with the catalog it came from.
"""

from __future__ import annotations

import time
from pathlib import Path

from .manifest import MANIFEST, Manifest, ManifestError, images_dir, load_manifest


class Catalog:
    """The images of one data directory, by name."""

    def __init__(self, data_dir: Path, ttl: float = 0.0):
        self.data_dir = Path(data_dir)
        self.ttl = ttl  # seconds a manifest (or its absence) is trusted without a stat; 0: stat every time
        self._parsed: dict[str, tuple[tuple[int, int], Manifest]] = {}  # image -> ((mtime_ns, size), manifest)
        self._checked: dict[str, tuple[float, Manifest | ManifestError]] = {}  # with a ttl: image -> (when, what)

    def with_ttl(self, ttl: float) -> Catalog:
        """The same images, trusted for `ttl` seconds between stats; the parses are shared."""
        if ttl == self.ttl:
            return self
        other = Catalog(self.data_dir, ttl)
        other._parsed = self._parsed
        return other

    def manifest(self, image: str) -> Manifest:
        """An image's manifest; raises ManifestError (not built, or unreadable)."""
        if self.ttl > 0:
            now = time.monotonic()
            seen = self._checked.get(image)
            if seen is None or now - seen[0] >= self.ttl:
                try:
                    got: Manifest | ManifestError = self._stat(image)
                except ManifestError as e:
                    got = e
                seen = self._checked[image] = (now, got)
            if isinstance(seen[1], ManifestError):
                raise seen[1]
            return seen[1]
        return self._stat(image)

    def _stat(self, image: str) -> Manifest:
        try:
            st = (images_dir(self.data_dir) / image / MANIFEST).stat()
        except OSError:
            self._parsed.pop(image, None)
            return load_manifest(self.data_dir, image)  # raises the right ManifestError
        key = (st.st_mtime_ns, st.st_size)
        cached = self._parsed.get(image)
        if cached is None or cached[0] != key:
            cached = (key, load_manifest(self.data_dir, image))
            self._parsed[image] = cached
        return cached[1]

    def file_sha256(self, image: str, file: str, size: int) -> str | None:
        """The manifest's sha256 for an image file, if the manifest lists it at this size (strong ETags)."""
        try:
            entry = self.manifest(image).files.get(file)
        except ManifestError:
            return None
        return entry.sha256 if entry is not None and entry.size == size else None
