"""The one place nodes, profiles, images and leases are read and written, with their checks.

`server/api.py` and `inventory/cli.py` are front ends over it: each turns a
request or a command line into a call here and a `ServiceError` into its own
answer (an HTTP status, or one line on stderr). So a node added over the API
and one added at the shell are checked alike (the GRUB-in-proxy refusal, names
that must exist, warnings), and both show the same `effective` view, which
comes from `policy.decide()`, never from a second reading of the settings.
Synchronous: the API runs it in a worker thread.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Collection, Iterable
from dataclasses import asdict
from typing import Any, Literal

from pydantic import ValidationError

from ..access import hardware_lease
from ..config import GRUB_PROXY_REFUSED, Config
from ..images.manifest import Manifest, ManifestError, images_dir, load_manifest
from ..macaddr import normalize_mac
from ..overlays import OVERLAYS_DIR
from ..policy import Booter
from ..proto.dhcp_core import LeaseRecord
from ..proto.pxe import Client
from . import schemas as S
from .records import NodeSpec, ProfileSpec
from .store import Store, StoreError
from .timeline import Boot, last_boot
from .views import CONSOLE_LEAD, boot_out, event_out, image_out, inventory_out, report_of, seeding_out


class ServiceError(Exception):
    """A request the service refuses; `status` is the HTTP status the API answers with."""

    status = 400


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: a key present sets, null removes, an object merges into an object."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


class _Snapshot:
    """Nodes and profiles read once, so listing N nodes decides N times without N queries."""

    def __init__(self, nodes: Iterable[NodeSpec], profiles: Iterable[ProfileSpec]):
        self.nodes = {n.mac: n for n in nodes}
        self.by_uuid = {n.uuid: n for n in self.nodes.values() if n.uuid}
        self.profiles = {p.name: p for p in profiles}

    def get_node(self, mac: str) -> NodeSpec | None:
        return self.nodes.get(mac)

    def node_by_uuid(self, uuid: str) -> NodeSpec | None:
        return self.by_uuid.get(uuid)

    def get_profile(self, name: str) -> ProfileSpec | None:
        return self.profiles.get(name)


class Service:
    """Operations on nodes, profiles, images and leases over one store and one policy."""

    def __init__(self, config: Config, store: Store, booter: Booter):
        self.config = config
        self.store = store
        self.booter = booter

    # -- nodes ------------------------------------------------------------------------
    def add_node(self, mac: str, body: S.NodeIn, replace: bool = False) -> tuple[S.NodeDetail, bool]:
        """Register a node; an existing one is refused unless `replace` (then it is replaced whole).
        Returns the node as shown, with its warnings, and whether it is new."""
        mac = normalize_mac(mac)
        old = self.store.nodes.get(mac)
        if old is not None and not replace:
            raise Conflict(f"node {mac} exists: `node set` changes what it names, `node add --replace` "
                           "replaces it whole")
        self._write(mac, body, body)
        return self._shown(mac, body), old is None

    def patch_node(self, mac: str, patch: dict[str, Any]) -> S.NodeDetail:
        """Change what `patch` names (RFC 7396: a key sets, null unsets, an absent key keeps)."""
        mac = normalize_mac(mac)
        old = self.store.nodes.get(mac)
        if old is None:
            raise NotFound(f"no node {mac}")
        if not isinstance(patch, dict):
            raise ServiceError("a merge patch is a JSON object")
        current = S.NodeIn.model_validate({k: v for k, v in asdict(old).items() if k in S.NodeIn.model_fields})
        try:
            body = S.NodeIn.model_validate(_merge(current.model_dump(exclude_defaults=True), patch))
        except ValidationError as e:
            raise ServiceError(S.validation_message(e)) from None
        # Only what the patch names is checked: a profile removed since, or a loader set before
        # proxy mode, does not block an unrelated change (doctor names those).
        named = S.NodeIn.model_validate({k: getattr(body, k) for k in ("loader", "profiles", "overlays")
                                         if k in patch})
        self._write(mac, body, named)
        return self._shown(mac, body)

    def _write(self, mac: str, body: S.NodeIn, named: S.NodeIn) -> None:
        """Store `body`, after checking what `named` (all of it, or a patch's part) says."""
        if named.loader == "grub" and self.config.dhcp.mode == "proxy":
            raise ServiceError(GRUB_PROXY_REFUSED)
        self._check_names(named.profiles, named.overlays)
        try:
            # discovered=False: an operator has now said what it is
            self.store.nodes.put(NodeSpec(mac=mac, **body.model_dump(), discovered=False))
        except StoreError as e:
            raise Conflict(str(e)) from None

    def _shown(self, mac: str, body: S.NodeIn) -> S.NodeDetail:
        detail = self.show_node(mac)
        detail.warnings = self._image_warnings(body.image, body.loader)
        return detail

    def remove_node(self, mac: str) -> None:
        mac = normalize_mac(mac)
        if not self.store.nodes.remove(mac):
            raise NotFound(f"no node {mac}")

    def list_nodes(self) -> list[S.NodeOut]:
        """Every machine that asked or booted, registered or not, with its last boot (from its
        newest 100 events) and what it boots; five queries, however many machines."""
        specs = self.store.nodes.all()
        booter = self.booter.using(_Snapshot(specs, self.store.profiles.all()))
        by_mac = {n.mac: n for n in specs}
        events = self.store.events.recent(100)
        inventory = self.store.hardware.latest_of()
        leases = _by_mac(self.store.leases.active())
        out = []
        for mac in sorted(by_mac.keys() | events.keys() | inventory.keys()):
            spec = by_mac.get(mac)
            evs = events.get(mac, [])
            boot = last_boot(evs)
            seen = max([*(e.at for e in evs[-1:]), *([inventory[mac][0]] if mac in inventory else [])], default=None)
            out.append(_node_out(spec or NodeSpec(mac=mac), boot, S.NodeOut, spec is not None,
                                 effective=_effective(booter, mac, leases.get(mac, []), seen, boot)))
        return out

    def status(self, macs: Collection[str] | None = None) -> list[S.NodeStatus]:
        """The status page's rows: every machine known, or those of `macs` (the live feed), each
        with its last boot (from its newest 200 events) and what it boots; six queries, however
        many machines."""
        specs = self.store.nodes.all(macs)
        booter = self.booter.using(_Snapshot(specs, self.store.profiles.all()))
        by_mac = {n.mac: n for n in specs}
        events = self.store.events.recent(200, macs)
        inventory = self.store.hardware.latest_of(macs)
        leases = _by_mac(self.store.leases.active(macs))
        rows = []
        for mac in sorted(by_mac.keys() | events.keys() | inventory.keys() if macs is None else set(macs)):
            spec = by_mac.get(mac)
            evs = events.get(mac, [])
            boot = last_boot(evs)
            seen = max([*(e.at for e in evs[-1:]), *([inventory[mac][0]] if mac in inventory else [])], default=None)
            rows.append(S.NodeStatus(
                mac=mac,
                registered=spec is not None,
                discovered=bool(spec and spec.discovered),
                hostname=spec.hostname if spec else None,
                image=spec.image if spec else None,
                inventory=inventory_out(inventory.get(mac)),
                last_boot=boot_out(boot),
                effective=_effective(booter, mac, leases.get(mac, []), seen, boot),
            ))
        return rows

    def show_node(self, mac: str) -> S.NodeDetail:
        """A machine with its inventory, last boot and what it boots; NotFound if nothing is known of it."""
        mac = normalize_mac(mac)
        spec = self.store.nodes.get(mac)
        events = self.store.events.of(mac)
        hist = self.store.hardware.history(mac, limit=1)
        inventory = inventory_out(hist[0] if hist else None)
        if spec is None and not events and inventory is None:
            raise NotFound(f"no node {mac}")
        boot = last_boot(events)
        seen = max([*(e.at for e in events[-1:]), *(at for at, _ in hist)], default=None)
        effective = _effective(self.booter, mac, self.store.leases.leases_of(mac), seen, boot)
        effective.bmc = self.store.power.bmc_in_use(mac)
        rec = self.store.tpms.get(mac)
        tpm = S.TpmOut.model_validate(rec, from_attributes=True) if rec is not None else None
        if tpm is not None and rec is not None:
            tpm.signed_reports = rec.state == "trusted" and rec.ak_public is not None
            tpm.measured_images = sorted(rec.pcrs or {})
        out = boot_out(boot)
        if boot is not None and out is not None:
            # The firmware prints before its first DHCP request: a boot's console starts a little
            # before its first event, unless that event is the power action that started it.
            since = boot.started - (0 if boot.events[0].stage == "power" else CONSOLE_LEAD)
            out.console = [S.ConsoleLineOut(at=S.unix_time(at), line=line)
                           for at, line in self.store.power.console_lines(mac, since)]
        detail = _node_out(spec or NodeSpec(mac=mac), boot, S.NodeDetail, spec is not None,
                           inventory=inventory, last_boot=out, effective=effective, tpm=tpm,
                           seeding=seeding_out(boot))
        assert isinstance(detail, S.NodeDetail)
        return detail

    def node_events(self, mac: str, limit: int) -> list[S.EventOut]:
        return [event_out(e) for e in self.store.events.of(normalize_mac(mac), limit)]

    def node_inventory(self, mac: str, limit: int = 50) -> list[S.InventoryOut]:
        mac = normalize_mac(mac)
        hist = self.store.hardware.history(mac, limit)
        if not hist:
            raise NotFound(f"no inventory for {mac}")
        return [S.InventoryOut(at=S.unix_time(at), report=report_of(d)) for at, d in hist]

    def trust_tpm(self, mac: str, replace: bool) -> S.TpmOut:
        """Trust the node's pending TPM, or (`replace`) the last other one it refused."""
        mac = normalize_mac(mac)
        rec = self.store.tpms.trust(mac, time.time(), replace)
        if rec is None:
            raise NotFound(f"{mac} has no {'refused ' if replace else ''}TPM to trust")
        return S.TpmOut.model_validate(rec, from_attributes=True)

    # -- profiles ---------------------------------------------------------------------
    def put_profile(self, name: str, body: S.ProfileIn) -> tuple[S.ProfileOut, bool]:
        """Create or replace a profile; returns it with whether it is new, and its warnings."""
        name = _plain(name)
        self._check_names([], body.overlays)
        old = self.store.profiles.get(name)
        try:
            kept = self.store.profiles.put(ProfileSpec(name=name, **body.model_dump()))
        except StoreError as e:
            raise ServiceError(str(e)) from None
        # as kept: the BMC's password is sealed and shown as ***
        out = S.ProfileOut(**asdict(kept), warnings=self._image_warnings(body.image, None))
        return out, old is None

    def list_profiles(self) -> list[S.ProfileOut]:
        return [S.ProfileOut(**asdict(p)) for p in self.store.profiles.all()]

    def show_profile(self, name: str) -> S.ProfileOut:
        p = self.store.profiles.get(_plain(name))
        if p is None:
            raise NotFound(f"no profile {name}")
        return S.ProfileOut(**asdict(p))

    def remove_profile(self, name: str) -> None:
        if not self.store.profiles.remove(_plain(name)):
            raise NotFound(f"no profile {name}")

    # -- images and leases ------------------------------------------------------------
    def list_images(self) -> list[S.ImageOut]:
        root = images_dir(self.config.data_dir)
        out = []
        for d in sorted(root.iterdir()) if root.is_dir() else []:
            try:
                out.append(image_out(load_manifest(self.config.data_dir, d.name)))
            except ManifestError:
                continue
        return out

    def show_image(self, name: str) -> S.ImageOut:
        try:
            S.image_name(name)
        except ValueError as e:
            raise ServiceError(str(e)) from None
        try:
            return image_out(load_manifest(self.config.data_dir, name))
        except ManifestError:
            raise NotFound(f"no image {name}") from None

    def list_leases(self) -> list[S.LeaseOut]:
        now = time.time()
        return [
            S.LeaseOut(ip=lease.ip, mac=lease.mac, expires=S.unix_time(lease.expires), active=lease.expires > now,
                       client_id=lease.client_id, hostname=lease.hostname)
            for lease in sorted(self.store.leases.load(), key=lambda lease: ipaddress.IPv4Address(lease.ip))
        ]

    def list_servers(self, this: str | None = None) -> list[S.ServerOut]:
        now = time.time()
        return [
            S.ServerOut(name=s.name, address=s.address, http_base=s.http_base, images=s.images,
                        started=S.unix_time(s.started), last_seen=S.unix_time(s.last_seen),
                        alive=now - s.last_seen <= self.config.cluster.dead_after, this=s.name == this, group=s.group)
            for s in self.store.servers.all()
        ]

    # -- checks -----------------------------------------------------------------------
    def _check_names(self, profiles: Iterable[str], overlays: Iterable[str]) -> None:
        """A profile or overlay named must exist: a typo would otherwise boot a node without it."""
        for p in profiles:
            if self.store.profiles.get(p) is None:
                raise ServiceError(f"no profile {p!r} (`ramboot profile list` shows them)")
        for o in overlays:
            if not (self.config.data_dir / OVERLAYS_DIR / o).is_dir():
                raise ServiceError(f"no overlay {o!r} (a directory {OVERLAYS_DIR}/{o}/ in the data directory)")

    def _image_warnings(self, image: str | None, loader: str | None) -> list[str]:
        """What will keep a node from booting as registered: said, not refused (an image may be built later)."""
        if not image:
            return []
        try:
            m: Manifest = self.booter.catalog.manifest(image)
        except ManifestError:
            return [f"image {image!r} is not built yet; the node will not boot until it is built "
                    "(`ramboot image list` shows those built)"]
        if (loader or self.config.boot.loader) == "grub" and m.kernel_signed is False:
            return [f"loader grub, but the kernel of image {image} carries no signature Debian's shim accepts: "
                    "under Secure Boot this node will not boot it"]
        return []


def _plain(name: str) -> str:
    try:
        return S.plain_name(name)
    except ValueError as e:
        raise ServiceError(str(e)) from None


def _by_mac(leases: Iterable[LeaseRecord]) -> dict[str, list[LeaseRecord]]:
    out: dict[str, list[LeaseRecord]] = {}
    for lease in leases:
        out.setdefault(lease.mac, []).append(lease)
    return out


def _effective(booter: Booter, mac: str, leases: list[LeaseRecord], seen: float | None,
               boot: Boot | None) -> S.Effective:
    """What `mac` boots, from the one decider, with its address: the fixed one, else its lease
    (its hardware lease first: another client id may have taken one for the same MAC)."""
    d = booter.decide(Client(mac))
    lease = hardware_lease(leases, mac, None, firmware=True) or max(leases, key=lambda x: x.expires, default=None)
    fixed = d.fixed_ip if d else None
    ip_from: Literal["fixed", "lease"] | None
    if fixed:
        ip, ip_from, expires = fixed, "fixed", lease.expires if lease and lease.ip == fixed else None
    elif lease:
        ip, ip_from, expires = lease.ip, "lease", lease.expires
    else:
        ip, ip_from, expires = None, None, None
    return S.Effective(
        image=d.image if d else None, image_from=d.image_from if d else None, loader=d.loader if d else None,
        kernel_args=d.kernel_args if d else "", ip=ip, ip_from=ip_from, lease_expires=S.unix_time_or_none(expires),
        profiles=list(d.profiles) if d else [], last_seen=S.unix_time_or_none(seen),
        last_boot=S.unix_time(boot.started) if boot else None)


def _node_out(spec: NodeSpec, boot: Boot | None, cls: type[S.NodeOut], registered: bool, **extra: Any) -> S.NodeOut:
    fields = asdict(spec)
    fields["labels"] = {str(k): str(v) for k, v in spec.labels.items()}
    state: Literal["registered", "discovered", "seen"] = (
        "seen" if not registered else "discovered" if spec.discovered else "registered")
    return cls(**fields, state=state, stage=boot.stage if boot else None,
               updated=S.unix_time(boot.updated) if boot else None, **extra)
