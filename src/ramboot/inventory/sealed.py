"""Secrets at rest: every value of the `secrets` table is AES-GCM ciphertext under a key
kept outside the database (`[security] secrets_key`, default DATA/secrets.key, 0600).

A database reader (a replica, a backup) gets no private key. Each value is bound to its
name (the AEAD's associated data), so a database writer cannot move one secret into
another's row either: a row that does not open under the key is an error, never data.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..config import ConfigError

PREFIX = "aesgcm1:"  # a sealed value: PREFIX + base64(nonce 12 bytes + ciphertext + tag 16 bytes)
KEY_BYTES = 32
_NONCE = 12
_HINT = "the key file they were sealed with ([security] secrets_key; servers on one database share it)"


class SealError(ConfigError):
    """The key file is missing, exposed, malformed or not the database's: one line."""


def load_key(path: Path, create: bool) -> bytes:
    """The 32-byte key in `path`; made (0600, atomically) when absent and `create`.
    Refused if group or others may read or write it, or if it is not 32 bytes."""
    if create and not path.exists():
        _make_key(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise SealError(f"secrets key {path}: missing, but the database's secrets are encrypted: give "
                        + _HINT) from None
    except OSError as e:
        raise SealError(f"secrets key {path}: cannot read it: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SealError(f"secrets key {path}: not a regular file")
        if st.st_mode & 0o077:
            raise SealError(f"secrets key {path}: mode {stat.S_IMODE(st.st_mode):04o} lets group or others "
                            f"at it: chmod 600 {path}")
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise SealError(f"secrets key {path}: {len(key)} bytes, a key is {KEY_BYTES} random bytes")
    return key


def _make_key(path: Path) -> None:
    """Written whole under a temporary name, then linked in: a server starting beside this one
    reads the whole key or none, and of two that make one at once the first link wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, os.urandom(KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()


class Sealer:
    """Seals and opens secret values with the key in `path`, read once (made at first use)."""

    def __init__(self, path: Path):
        self.path = path
        self._aead: AESGCM | None = None
        self._key = b""

    def ready(self, create: bool = True) -> AESGCM:
        if self._aead is None:
            self._key = load_key(self.path, create)
            self._aead = AESGCM(self._key)
        return self._aead

    def derive(self, info: bytes) -> bytes:
        """A 32-byte key for `info` (HMAC-SHA256 under the key file): every server sharing the
        key file derives the same one, and nothing in the database gives it away."""
        self.ready(create=True)
        return hmac.new(self._key, b"ramboot derive\0" + info, hashlib.sha256).digest()

    def seal(self, name: str, value: str) -> str:
        nonce = os.urandom(_NONCE)
        ct = self.ready().encrypt(nonce, value.encode(), name.encode())
        return PREFIX + base64.b64encode(nonce + ct).decode()

    def open(self, name: str, stored: str) -> str:
        if not stored.startswith(PREFIX):
            raise SealError(f"secret {name!r} is not sealed: the database was written without the key")
        try:
            raw = base64.b64decode(stored[len(PREFIX):], validate=True)
            return self.ready(create=False).decrypt(raw[:_NONCE], raw[_NONCE:], name.encode()).decode()
        except (InvalidTag, ValueError):
            raise SealError(f"secrets key {self.path}: the database's secrets do not open with it (AES-GCM "
                            f"check failed on {name!r}): give " + _HINT) from None
