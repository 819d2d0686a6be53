"""A node's own files, rendered for it: its identity, then its overlays, as one archive.

The identity comes first: hostname, `/etc/hosts` of the cluster, a stable
`/etc/machine-id`, root's `authorized_keys`, SSH host keys with their
certificates, a network file for the boot NIC, and a NoCloud seed when the
image has cloud-init. Then each overlay in `DATA/overlays/NAME/`, in the
node's order, as Warewulf's are: a file ending in `.j2` is a Jinja2 template
rendered with `node` (this node, with its labels) and `nodes` (every
registered node); other files are copied. A later file wins over an earlier
one at the same path. Nothing is read outside the overlay's tree: symlinks
are kept as links, never followed.

The archive is reproducible (sorted, fixed times and owners), so its sha256,
served beside it, matches the archive a second request gets.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox

from .access import hardware_lease
from .identity import Identities
from .images.catalog import Catalog
from .images.manifest import ManifestError
from .inventory.records import NodeSpec
from .inventory.store import Store
from .policy import Decision
from .proto.dhcp_core import LeaseRecord

OVERLAYS_DIR = "overlays"
MAX_OVERLAY_BYTES = 64 << 20  # a node's overlay is configuration, not a second image


class OverlayError(Exception):
    """An overlay cannot be rendered: one line that names the overlay and the file."""


@dataclass(frozen=True)
class File:
    """One entry of a node's overlay; `data` None is a directory, `link` a symlink."""

    path: str  # relative to /, no leading slash
    mode: int
    data: bytes | None = None
    link: str | None = None


# -- the template context ----------------------------------------------------------
def node_context(spec: NodeSpec | None, mac: str, address: str | None, decision: Decision | None = None
                 ) -> dict[str, Any]:
    """What a template sees of one node."""
    labels = dict(decision.labels) if decision else {str(k): str(v) for k, v in (spec.labels if spec else {}).items()}
    return {
        "mac": mac,
        "hostname": spec.hostname if spec else None,
        "ip": address,
        "uuid": spec.uuid if spec else None,
        "image": decision.image if decision else (spec.image if spec else None),
        "labels": labels,
        "profiles": list(decision.profiles) if decision else list(spec.profiles if spec else []),
        "registered": spec is not None,
    }


def addresses(store: Store) -> dict[str, str]:
    """Each node's address: its fixed one, else its hardware lease (access.py). A lease that
    another client id took for a node's chaddr never names that node, in /etc/hosts or in
    its host certificates."""
    import time

    now = time.time()
    nodes = store.nodes.all()
    uuid_of = {n.mac: n.uuid for n in nodes}
    by_mac: dict[str, list[LeaseRecord]] = {}
    for lease in store.leases.load():
        if lease.expires > now:
            by_mac.setdefault(lease.mac, []).append(lease)
    out: dict[str, str] = {}
    for mac, leases in by_mac.items():
        own = hardware_lease(leases, mac, uuid_of.get(mac))
        if own is not None:
            out[mac] = own.ip
    for n in nodes:
        if n.ip:
            out[n.mac] = n.ip
    return out


# -- rendering ----------------------------------------------------------------------
class OverlayRenderer:
    """Renders a node's archive from its Decision, the store, the image catalog and `DATA/overlays/`."""

    def __init__(self, data_dir: Path, store: Store, catalog: Catalog):
        self.data_dir = Path(data_dir)
        self.store = store
        self.catalog = catalog
        self.identities = Identities(store.secrets)
        self._env = jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                                        autoescape=False)

    def files(self, d: Decision) -> list[File]:
        """Identity first, then the overlays in order; a later path wins."""
        spec = self._spec(d)
        node_mac = d.node or d.mac
        addr = addresses(self.store)
        nodes = [node_context(n, n.mac, addr.get(n.mac)) for n in self.store.nodes.all()]
        me = node_context(spec, node_mac, addr.get(d.mac) or addr.get(node_mac), d)
        out: dict[str, File] = {}
        for f in self._identity(d, me, nodes):
            out[f.path] = f
        for name in d.overlays:
            for f in self.tree(name, me, nodes):
                out[f.path] = f
        return [out[p] for p in sorted(out)]

    def archive(self, d: Decision) -> bytes:
        return archive(self.files(d))

    def tree(self, name: str, node: dict[str, Any], nodes: list[dict[str, Any]]) -> list[File]:
        """One overlay's files, templates rendered for `node`."""
        root = self.data_dir / OVERLAYS_DIR / name
        if "/" in name or name in ("", ".", "..") or not root.is_dir():
            raise OverlayError(f"overlay {name!r}: no such overlay (expected a directory {OVERLAYS_DIR}/{name}/ "
                               "in the data directory)")
        out: list[File] = []
        total = 0
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            here = Path(dirpath)
            rel_dir = here.relative_to(root).as_posix()
            if rel_dir != ".":
                out.append(File(rel_dir, stat.S_IMODE(here.lstat().st_mode)))
            for fn in sorted(filenames + [d for d in dirnames if (here / d).is_symlink()]):
                p = here / fn
                rel = p.relative_to(root).as_posix()
                st = p.lstat()
                if stat.S_ISLNK(st.st_mode):
                    out.append(File(rel, 0o777, link=os.readlink(p)))
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue  # devices, sockets, fifos: not overlay content
                data = p.read_bytes()
                if rel.endswith(".j2"):
                    rel = rel[:-3]
                    data = self._render(name, rel, data, node, nodes)
                total += len(data)
                if total > MAX_OVERLAY_BYTES:
                    raise OverlayError(f"overlay {name!r}: over {MAX_OVERLAY_BYTES >> 20} MiB; "
                                       "put large files in the image")
                out.append(File(rel, stat.S_IMODE(st.st_mode), data))
        return out

    def _render(self, name: str, rel: str, data: bytes, node: dict[str, Any], nodes: list[dict[str, Any]]) -> bytes:
        try:
            template = self._env.from_string(data.decode())
            return template.render(node=node, nodes=nodes).encode()
        except UnicodeDecodeError:
            raise OverlayError(f"overlay {name!r}: {rel}.j2 is not UTF-8 text") from None
        except jinja2.TemplateSyntaxError as e:
            raise OverlayError(f"overlay {name!r}: {rel}.j2 line {e.lineno}: {e.message}") from None
        except jinja2.TemplateError as e:
            raise OverlayError(f"overlay {name!r}: {rel}.j2: {e}") from None

    def _spec(self, d: Decision) -> NodeSpec | None:
        return self.store.nodes.get(d.node) if d.node else None

    def _identity(self, d: Decision, me: dict[str, Any], nodes: list[dict[str, Any]]) -> list[File]:
        node_mac = d.node or d.mac
        out = [File("etc", 0o755), File("root", 0o700)]
        if d.hostname:
            out.append(File("etc/hostname", 0o644, (d.hostname + "\n").encode()))
        out.append(File("etc/hosts", 0o644, hosts_file(d.hostname, nodes).encode()))
        out.append(File("etc/machine-id", 0o444, (self.identities.machine_id(node_mac) + "\n").encode()))
        if d.ssh_keys:
            out.append(File("root/.ssh", 0o700))
            out.append(File("root/.ssh/authorized_keys", 0o600, ("\n".join(d.ssh_keys) + "\n").encode()))
        principals = [p for p in (d.hostname, me.get("ip"), node_mac) if p]
        keys = self.identities.host_keys(node_mac, principals)
        out += [File("etc/ssh", 0o755), File("etc/ssh/sshd_config.d", 0o755)]
        conf = []
        for k in keys:
            base = f"etc/ssh/ssh_host_{k.kind}_key"
            out.append(File(base, 0o600, k.private.encode()))
            out.append(File(base + ".pub", 0o644, (k.public + "\n").encode()))
            out.append(File(base + "-cert.pub", 0o644, (k.certificate + "\n").encode()))
            conf += [f"HostKey /{base}", f"HostCertificate /{base}-cert.pub"]
        out.append(File("etc/ssh/sshd_config.d/ramboot.conf", 0o644,
                        ("# written by ramboot: this node's host keys and their certificates\n"
                         + "\n".join(conf) + "\n").encode()))
        out += [File("etc/systemd", 0o755), File("etc/systemd/network", 0o755),
                File("etc/systemd/network/10-ramboot-boot.network", 0o644, network_file(d.mac or node_mac).encode())]
        if self._has_cloud_init(d.image):
            out += nocloud_seed(self.identities.machine_id(node_mac), d.hostname, d.ssh_keys)
        return out

    def _has_cloud_init(self, image: str) -> bool:
        try:
            return self.catalog.manifest(image).cloud_init
        except ManifestError:
            return False


def hosts_file(hostname: str | None, nodes: list[dict[str, Any]]) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    if hostname:
        lines.append(f"127.0.1.1\t{hostname}")
    lines.append("# the cluster's nodes (ramboot)")
    for n in sorted(nodes, key=lambda n: (n["hostname"] or "", n["mac"])):
        if n["hostname"] and n["ip"]:
            lines.append(f"{n['ip']}\t{n['hostname']}")
    return "\n".join(lines) + "\n"


def network_file(mac: str) -> str:
    """systemd-networkd for the boot NIC: DHCP on, keeping the address the initramfs got meanwhile."""
    return ("# written by ramboot: the NIC this node booted from\n"
            f"[Match]\nMACAddress={mac}\n\n[Network]\nDHCP=ipv4\nKeepConfiguration=dhcp\n"
            "\n[DHCPv4]\nClientIdentifier=mac\n")  # its hardware lease, as the firmware and initramfs hold it


def nocloud_seed(instance_id: str, hostname: str | None, ssh_keys: tuple[str, ...]) -> list[File]:
    seed = "var/lib/cloud/seed/nocloud"
    meta = f"instance-id: {instance_id}\n" + (f"local-hostname: {hostname}\n" if hostname else "")
    user = "#cloud-config\n" + ("ssh_authorized_keys:\n" + "".join(f"  - {k}\n" for k in ssh_keys) if ssh_keys else "")
    return [File("var", 0o755), File("var/lib", 0o755), File("var/lib/cloud", 0o755),
            File("var/lib/cloud/seed", 0o755), File(seed, 0o755),
            File(f"{seed}/meta-data", 0o644, meta.encode()), File(f"{seed}/user-data", 0o644, user.encode())]


def archive(files: list[File]) -> bytes:
    """A reproducible tar of the files: sorted, owned by root, time 0."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for f in sorted(files, key=lambda f: f.path):
            info = tarfile.TarInfo(f.path)
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = f.mode, 0, 0, 0, "root", "root"
            if f.link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, f.link
                tar.addfile(info)
            elif f.data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(f.data)
                tar.addfile(info, io.BytesIO(f.data))
    return buf.getvalue()


def sha256_line(data: bytes, name: str) -> bytes:
    """What `sha256sum` prints for the archive: the initramfs checks it."""
    return f"{hashlib.sha256(data).hexdigest()}  {name}\n".encode()
