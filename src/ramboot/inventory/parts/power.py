"""Power and console: a node's BMC with its password, the power-action counters, console lines."""

from __future__ import annotations

from sqlalchemy import delete, insert, select

from ...macaddr import normalize_mac
from ...power.bmc import Bmc
from ...power.bmc import parse as parse_bmc
from ..models import ConsoleLine, PowerCount
from .db import Db
from .nodes import NodeRepo, ProfileRepo, node_bmc_secret, profile_bmc_secret
from .secrets import SecretRepo


class PowerRepo:
    def __init__(self, db: Db, nodes: NodeRepo, profiles: ProfileRepo, secrets: SecretRepo):
        self._db, self._nodes, self._profiles, self._secrets = db, nodes, profiles, secrets

    def bmc(self, mac: str) -> Bmc | None:
        """The node's BMC with its password (the node's own, else its last profile's that has one)."""
        spec = self._nodes.get(mac)
        if spec is None:
            return None
        found: tuple[str, str] | None = (node_bmc_secret(spec.mac), spec.bmc) if spec.bmc else None
        if found is None:
            for name in reversed(spec.profiles):
                p = self._profiles.get(name)
                if p is not None and p.bmc:
                    found = (profile_bmc_secret(name), p.bmc)
                    break
        if found is None:
            return None
        bmc = parse_bmc(found[1])
        if not bmc.needs_password:
            return bmc
        return bmc.with_password(self._secrets.peek(found[0]))

    def count(self, action: str, result: str) -> None:
        with self._db.session.begin() as s:
            row = s.get(PowerCount, (action, result), with_for_update=True) or PowerCount(action=action, result=result,
                                                                                         n=0)
            row.n = (row.n or 0) + 1
            s.add(row)

    def counts(self) -> dict[tuple[str, str], int]:
        with self._db.session() as s:
            return {(r.action, r.result): r.n for r in s.scalars(select(PowerCount))}

    def add_console_lines(self, mac: str, lines: list[tuple[float, str]], keep: int) -> None:
        """A node's console lines; its oldest beyond `keep` go."""
        if not lines:
            return
        mac = normalize_mac(mac)
        with self._db.session.begin() as s:
            s.execute(insert(ConsoleLine), [{"mac": mac, "at": at, "line": line[:200]} for at, line in lines])
            cut = s.scalar(select(ConsoleLine.id).where(ConsoleLine.mac == mac).order_by(ConsoleLine.id.desc())
                           .offset(keep).limit(1))
            if cut is not None:
                s.execute(delete(ConsoleLine).where(ConsoleLine.mac == mac, ConsoleLine.id <= cut))

    def console_lines(self, mac: str, since: float, limit: int = 2000) -> list[tuple[float, str]]:
        """The node's console lines from `since` on, oldest first (at most the newest `limit`)."""
        q = (select(ConsoleLine.at, ConsoleLine.line)
             .where(ConsoleLine.mac == normalize_mac(mac), ConsoleLine.at >= since)
             .order_by(ConsoleLine.id.desc()).limit(limit))
        with self._db.session() as s:
            return [(r.at, r.line) for r in reversed(s.execute(q).all())]
