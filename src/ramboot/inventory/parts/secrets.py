"""Secrets, sealed at rest (`..sealed`): host keys, the SSH CA, machine ids, BMC passwords."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from ..models import Secret
from ..sealed import PREFIX, Sealer, SealError
from .db import Db, StoreError, StoreOpenError


class SecretRepo:
    def __init__(self, db: Db, key: Path | None):
        """`key`: the key file that seals the `secrets` table; without one, `get()` is refused.
        At open a wrong or missing key stops here, in one line (StoreOpenError)."""
        self._db = db
        self._sealer = Sealer(key) if key is not None else None
        try:
            self._seal_plaintext()
        except SealError as e:
            raise StoreOpenError(str(e)) from None

    def _seal_plaintext(self) -> None:
        """Rows an older version kept in clear are sealed (on SQLite the file is then rewritten,
        so no clear copy is left in it)."""
        if self._sealer is None:
            return
        with self._db.session() as s:
            rows = select(Secret.name, Secret.value)
            sealed = s.execute(rows.where(Secret.value.startswith(PREFIX)).limit(1)).first()
            plain = s.execute(rows.where(~Secret.value.startswith(PREFIX))).all()
        if sealed is not None:
            self._sealer.open(sealed.name, sealed.value)
        elif plain or self._sealer.path.exists():
            self._sealer.ready(create=True)  # made at first use; an exposed or malformed key is refused at open
        if not plain:
            return
        with self._db.engine.begin() as conn:
            for name, value in plain:
                conn.execute(update(Secret).where(Secret.name == name, Secret.value == value)
                             .values(value=self._sealer.seal(name, value)))
        if self._db.dialect == "sqlite":
            try:
                with self._db.engine.connect() as conn:
                    conn.exec_driver_sql("VACUUM")
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            except OperationalError:
                pass  # another process holds the file: the rows are sealed; its free pages go at a later VACUUM

    def _sealing(self) -> Sealer:
        if self._sealer is None:
            raise StoreError("the store was opened without a secrets key ([security] secrets_key)")
        return self._sealer

    def derived_key(self, info: bytes) -> bytes:
        """A key derived from the secrets key for `info` (a TPM-wrapped boot key: tpm_gate.py)."""
        return self._sealing().derive(info)

    def get(self, name: str, make: Callable[[], str]) -> str:
        """The secret called `name`, made with `make()` and kept (sealed) the first time it is asked for.

        Race-safe across servers on one database: of two that make it at once, the
        first insert wins and both return the kept value.
        """
        sealer = self._sealing()
        with self._db.session() as s:
            row = s.get(Secret, name)
            if row is not None:
                return sealer.open(name, row.value)
        value = make()
        try:
            with self._db.session.begin() as s:
                s.add(Secret(name=name, value=sealer.seal(name, value)))
        except IntegrityError:
            pass
        with self._db.session() as s:
            row = s.get(Secret, name)
            assert row is not None
            return sealer.open(name, row.value)

    def peek(self, name: str) -> str | None:
        """The secret if it is kept, else None (nothing is made)."""
        with self._db.session() as s:
            row = s.get(Secret, name)
            return self._sealing().open(name, row.value) if row is not None else None

    def set(self, name: str, value: str) -> None:
        sealed = self._sealing().seal(name, value)
        with self._db.session.begin() as s:
            row = s.get(Secret, name) or Secret(name=name)
            row.value = sealed
            s.add(row)

    def drop(self, name: str) -> None:
        with self._db.session.begin() as s:
            s.execute(delete(Secret).where(Secret.name == name))
