"""The credentials table: one row per boot's node credential (access.py holds the rule).

Claims are one conditional UPDATE, so of two servers on one database that see a
claim at once, exactly one wins and the other sees a second claim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from .models import Credential
from .records import CredentialRecord

_FIELDS = ("token_sha256", "nic", "node", "uuid", "ip", "minted", "state", "claimed_ip", "claimed_at")


def _record(row: Credential) -> CredentialRecord:
    return CredentialRecord(**{f: getattr(row, f) for f in _FIELDS})


class Credentials:
    def __init__(self, session: Callable[[], Any]):
        self._session = session  # a sessionmaker

    def mint(self, rec: CredentialRecord, keep_after: float) -> None:
        """Keep a new credential; the node's earlier unclaimed ones are superseded, old ones forgotten."""
        with self._session.begin() as s:  # type: ignore[attr-defined]
            s.execute(update(Credential).where(Credential.node == rec.node, Credential.state == "issued")
                      .values(state="superseded"))
            s.execute(delete(Credential).where(Credential.minted < keep_after))
            s.add(Credential(**{f: getattr(rec, f) for f in _FIELDS}))

    def get(self, token_sha256: str) -> CredentialRecord | None:
        s: Session
        with self._session() as s:
            row = s.get(Credential, token_sha256)
            return _record(row) if row is not None else None

    def claim(self, token_sha256: str, ip: str, now: float) -> bool:
        """issued -> claimed, atomically; False if it was not issued any more."""
        with self._session.begin() as s:  # type: ignore[attr-defined]
            res = s.execute(update(Credential)
                            .where(Credential.token_sha256 == token_sha256, Credential.state == "issued")
                            .values(state="claimed", claimed_ip=ip, claimed_at=now))
            return bool(res.rowcount)

    def contest(self, token_sha256: str) -> None:
        with self._session.begin() as s:  # type: ignore[attr-defined]
            s.execute(update(Credential).where(Credential.token_sha256 == token_sha256).values(state="contested"))

    def current(self, node: str) -> CredentialRecord | None:
        """The node's newest credential."""
        s: Session
        with self._session() as s:
            row = s.scalar(select(Credential).where(Credential.node == node).order_by(Credential.minted.desc())
                           .limit(1))
            return _record(row) if row is not None else None
