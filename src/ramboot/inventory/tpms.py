"""The tpms table: one row per node, the endorsement key it enrolled (tpm_gate.py holds the rule).

The first EK of a node is one INSERT on its primary key, so of two servers that see two
EKs at once exactly one is kept and the other is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .models import Tpm
from .records import TpmRecord

_FIELDS = ("node", "ek_fingerprint", "ek_public", "ek_cert", "state", "seen", "trusted_at",
           "refused_fingerprint", "refused_public", "refused_at", "boot", "ak_public", "report_seq",
           "pcrs", "pcr_refused", "pcr_refused_at")


def _record(row: Tpm) -> TpmRecord:
    return TpmRecord(**{f: getattr(row, f) for f in _FIELDS})


class Tpms:
    def __init__(self, session: Callable[[], Any]):
        self._session = session  # a sessionmaker

    def get(self, node: str) -> TpmRecord | None:
        s: Session
        with self._session() as s:
            row = s.get(Tpm, node)
            return _record(row) if row is not None else None

    def enrol(self, rec: TpmRecord) -> TpmRecord:
        """Keep `rec` as the node's TPM unless it has one; the one it has (perhaps `rec`)."""
        try:
            with self._session.begin() as s:  # type: ignore[attr-defined]
                if (row := s.get(Tpm, rec.node)) is not None:
                    return _record(row)
                s.add(Tpm(**{f: getattr(rec, f) for f in _FIELDS}))
            return rec
        except IntegrityError:  # another server kept one a moment ago
            kept = self.get(rec.node)
            assert kept is not None
            return kept

    def refused(self, node: str, fingerprint: str, public: str, now: float) -> None:
        """Remember the last other EK that asked for this node (to show, and to trust on purpose)."""
        with self._session.begin() as s:  # type: ignore[attr-defined]
            s.execute(update(Tpm).where(Tpm.node == node)
                      .values(refused_fingerprint=fingerprint, refused_public=public, refused_at=now))

    def trust(self, node: str, now: float, replace_with_refused: bool = False) -> TpmRecord | None:
        """pending -> trusted; or (a replaced board) the last refused EK becomes the node's, trusted.
        None if the node has no TPM (or no refused one to take)."""
        with self._session.begin() as s:  # type: ignore[attr-defined]
            row = s.get(Tpm, node)
            if row is None or (replace_with_refused and row.refused_public is None):
                return None
            if replace_with_refused:
                row.ek_fingerprint, row.ek_public, row.ek_cert = row.refused_fingerprint, row.refused_public, None
                row.refused_fingerprint = row.refused_public = None
                row.refused_at = None
            row.state, row.trusted_at = "trusted", now
            row.pcrs = row.pcr_refused = row.pcr_refused_at = None  # the next boot's PCRs are the trusted ones
            return _record(row)

    def bind_boot(self, node: str, boot: str, ak_public: str) -> None:
        """This boot's AK signs the node's reports from now on, its counter from 0."""
        with self._session.begin() as s:  # type: ignore[attr-defined]
            s.execute(update(Tpm).where(Tpm.node == node)
                      .values(boot=boot, ak_public=ak_public, report_seq=0))

    def advance(self, node: str, boot: str, seq: int) -> bool:
        """Take report counter `seq` of this boot, if it is past the last one taken: one
        conditional UPDATE, so of two servers shown the same report only one accepts it."""
        with self._session.begin() as s:  # type: ignore[attr-defined]
            done = s.execute(update(Tpm).where(Tpm.node == node, Tpm.boot == boot, Tpm.report_seq < seq)
                             .values(report_seq=seq))
            return bool(done.rowcount)

    def keep_pcrs(self, node: str, image: str, values: dict[str, str]) -> dict[str, str]:
        """`values` as the image's trusted PCRs unless some are kept already; those kept."""
        with self._session.begin() as s:  # type: ignore[attr-defined]
            row = s.get(Tpm, node, with_for_update=True)
            if row is None:
                return values
            pcrs = dict(row.pcrs or {})
            if image in pcrs:
                return dict(pcrs[image])
            pcrs[image] = values
            row.pcrs = pcrs
            return values

    def pcr_refused(self, node: str, why: str, now: float) -> None:
        with self._session.begin() as s:  # type: ignore[attr-defined]
            s.execute(update(Tpm).where(Tpm.node == node).values(pcr_refused=why[:300], pcr_refused_at=now))
