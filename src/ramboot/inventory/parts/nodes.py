"""Nodes and profiles: what an operator registered, and the directory the policy reads."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import delete, select, update

from ...macaddr import normalize_mac
from ...power.bmc import BmcError
from ...power.bmc import parse as parse_bmc
from ..models import Node, Profile, Secret
from ..records import NodeSpec, ProfileSpec
from .db import Db, StoreError
from .secrets import SecretRepo

_NODE_FIELDS = ("image", "hostname", "ip", "loader", "uuid", "kernel_args", "labels", "discovered", "ssh_keys",
                "profiles", "overlays")
_PROFILE_FIELDS = ("image", "kernel_args", "ssh_keys", "overlays", "labels")


def node_bmc_secret(mac: str) -> str:
    return f"bmc:node:{mac}"


def profile_bmc_secret(name: str) -> str:
    return f"bmc:profile:{name}"


def _keep_bmc(secrets: SecretRepo, secret: str, url: str | None) -> str | None:
    """Seals the URL's password (a URL without one, or with `***`, keeps the sealed one) and
    returns the URL to keep in the row (`power/bmc.py`)."""
    if not url:
        secrets.drop(secret)
        return None
    try:
        bmc = parse_bmc(url)
    except BmcError as e:
        raise StoreError(f"--bmc: {e}") from None
    if bmc.password is not None:
        secrets.set(secret, bmc.password)
    return bmc.redacted()


class NodeRepo:
    def __init__(self, db: Db, secrets: SecretRepo):
        self._db, self._secrets = db, secrets

    def put(self, spec: NodeSpec) -> NodeSpec:
        """Replaces what is registered for the node (its boot-once image stays: `set_boot_once`)."""
        mac = normalize_mac(spec.mac)
        bmc = _keep_bmc(self._secrets, node_bmc_secret(mac), spec.bmc)
        with self._db.session.begin() as s:
            if spec.ip:
                other = s.scalar(select(Node).where(Node.ip == spec.ip, Node.mac != mac))
                if other is not None:
                    raise StoreError(f"address {spec.ip} is already fixed for {other.mac}")
            row = s.get(Node, mac) or Node(mac=mac)
            for k in _NODE_FIELDS:
                setattr(row, k, getattr(spec, k))
            row.bmc = bmc
            s.add(row)
        out = self.get(mac)
        assert out is not None
        return out

    def set_boot_once(self, mac: str, image: str | None, only_if: str | None = None) -> bool:
        """The image of the node's next boot only (None: its own again). `only_if`: change it only
        while it is still that image (two servers consuming one boot-once clear it once)."""
        with self._db.session.begin() as s:
            q = update(Node).where(Node.mac == normalize_mac(mac))
            if only_if is not None:
                q = q.where(Node.boot_once == only_if)
            return bool(s.execute(q.values(boot_once=image)).rowcount > 0)  # type: ignore[attr-defined]

    def get(self, mac: str) -> NodeSpec | None:
        with self._db.session() as s:
            row = s.get(Node, normalize_mac(mac))
            return _node_spec(row) if row else None

    def by_uuid(self, uuid: str) -> NodeSpec | None:
        with self._db.session() as s:
            row = s.scalar(select(Node).where(Node.uuid == uuid))
            return _node_spec(row) if row else None

    def all(self, macs: Collection[str] | None = None) -> list[NodeSpec]:
        """Every node, or those of `macs`, in one query."""
        q = select(Node).order_by(Node.mac)
        if macs is not None:
            q = q.where(Node.mac.in_(list(macs)))
        with self._db.session() as s:
            return [_node_spec(r) for r in s.scalars(q)]

    def remove(self, mac: str) -> bool:
        mac = normalize_mac(mac)
        with self._db.session.begin() as s:
            s.execute(delete(Secret).where(Secret.name == node_bmc_secret(mac)))
            return bool(s.execute(delete(Node).where(Node.mac == mac)).rowcount > 0)  # type: ignore[attr-defined]


class ProfileRepo:
    def __init__(self, db: Db, secrets: SecretRepo):
        self._db, self._secrets = db, secrets

    def put(self, spec: ProfileSpec) -> ProfileSpec:
        bmc = _keep_bmc(self._secrets, profile_bmc_secret(spec.name), spec.bmc)
        with self._db.session.begin() as s:
            row = s.get(Profile, spec.name) or Profile(name=spec.name)
            for k in _PROFILE_FIELDS:
                setattr(row, k, getattr(spec, k))
            row.bmc = bmc
            s.add(row)
        out = self.get(spec.name)
        assert out is not None
        return out

    def get(self, name: str) -> ProfileSpec | None:
        with self._db.session() as s:
            row = s.get(Profile, name)
            return _profile_spec(row) if row else None

    def all(self) -> list[ProfileSpec]:
        with self._db.session() as s:
            return [_profile_spec(r) for r in s.scalars(select(Profile).order_by(Profile.name))]

    def remove(self, name: str) -> bool:
        with self._db.session.begin() as s:
            s.execute(delete(Secret).where(Secret.name == profile_bmc_secret(name)))
            return bool(s.execute(delete(Profile).where(Profile.name == name)).rowcount > 0)  # type: ignore[attr-defined]


def _profile_spec(r: Profile) -> ProfileSpec:
    return ProfileSpec(name=r.name, image=r.image, kernel_args=r.kernel_args or "", ssh_keys=list(r.ssh_keys or []),
                       overlays=list(r.overlays or []), labels=dict(r.labels or {}), bmc=r.bmc)


def _node_spec(r: Node) -> NodeSpec:
    return NodeSpec(
        mac=r.mac,
        image=r.image,
        hostname=r.hostname,
        ip=r.ip,
        loader=r.loader,
        uuid=r.uuid,
        kernel_args=r.kernel_args or "",
        labels=dict(r.labels or {}),
        discovered=bool(r.discovered),
        ssh_keys=list(r.ssh_keys or []),
        profiles=list(r.profiles or []),
        overlays=list(r.overlays or []),
        bmc=r.bmc,
        boot_once=r.boot_once,
    )
