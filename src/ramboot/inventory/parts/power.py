"""Power and console: a node's BMC with its password, the power-action counters, console lines."""

from __future__ import annotations

from sqlalchemy import delete, insert, select

from ...macaddr import normalize_mac
from ...power.bmc import AutoUnresolved, Bmc, resolve_auto
from ...power.bmc import parse as parse_bmc
from ..models import ConsoleLine, PowerCount
from .db import Db
from .hardware import HardwareRepo
from .nodes import NodeRepo, ProfileRepo, node_bmc_secret, profile_bmc_secret
from .secrets import SecretRepo


class PowerRepo:
    def __init__(self, db: Db, nodes: NodeRepo, profiles: ProfileRepo, secrets: SecretRepo, hardware: HardwareRepo):
        self._db, self._nodes, self._profiles, self._secrets = db, nodes, profiles, secrets
        self._hardware = hardware

    def _bmc_of(self, mac: str) -> tuple[str, str] | None:
        """(the secret's name, the URL without password) of the node's BMC: its own, else its
        last profile's that has one."""
        spec = self._nodes.get(mac)
        if spec is None:
            return None
        if spec.bmc:
            return node_bmc_secret(spec.mac), spec.bmc
        for name in reversed(spec.profiles):
            p = self._profiles.get(name)
            if p is not None and p.bmc:
                return profile_bmc_secret(name), p.bmc
        return None

    def bmc(self, mac: str) -> Bmc | None:
        """The node's BMC with its password (the node's own, else its last profile's that has one);
        `@auto` resolved from its latest hardware report (AutoUnresolved when it has none)."""
        found = self._bmc_of(mac)
        if found is None:
            return None
        bmc = resolve_auto(parse_bmc(found[1]), self._hardware.latest(mac))
        if not bmc.needs_password:
            return bmc
        return bmc.with_password(self._secrets.peek(found[0]))

    def bmc_in_use(self, mac: str) -> str | None:
        """The URL the node's BMC is reached at, password as ***: `@auto` resolved (or kept when the
        node has reported none); None without a BMC. Opens no secret."""
        found = self._bmc_of(mac)
        if found is None:
            return None
        bmc = parse_bmc(found[1])
        try:
            return resolve_auto(bmc, self._hardware.latest(mac)).redacted()
        except AutoUnresolved:
            return bmc.redacted()

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
