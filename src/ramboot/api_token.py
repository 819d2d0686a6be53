"""The API's admin token when the config names none: DATA/api-token, made by `serve` at first start.

The server keeps it, the CLI and the lab read it: one file, 0600, so only who may read the
data directory (root, usually) gets admin access without being told the token.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from .config import Config

log = logging.getLogger("ramboot.api")

TOKEN_FILE = "api-token"
TOKEN_BYTES = 32


def token_file(config: Config) -> Path:
    return config.data_dir / TOKEN_FILE


def ensure_admin_token(config: Config) -> str | None:
    """Give `config.api.token` a value: the configured one, else DATA/api-token (made if missing).

    Returns where the token is, never the token, for `serve` to say once it serves."""
    if config.api.token is not None:
        return None
    path = token_file(config)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text().strip()
        if len(token) < 8:
            raise OSError(f"{path}: not an API token (remove it and a new one is made)") from None
        if path.stat().st_mode & 0o077:
            log.warning("api: %s is readable by others than its owner (chmod 600 it)", path)
        note = f"api: the admin token is in {path}"
    else:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        note = f"api: no [api] token configured; made an admin token in {path} (give it as $RAMBOOT_TOKEN)"
    config.api.token = token
    return note


def client_token(config: Config) -> str | None:
    """The token a client on this machine may use for the server of `config`: the configured
    admin token, else DATA/api-token if this user can read it."""
    if config.api.token is not None:
        return config.api.token
    try:
        return token_file(config).read_text().strip() or None
    except OSError:
        return None
