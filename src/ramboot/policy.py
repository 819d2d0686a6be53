"""The one policy seam: "who is this machine" in, a `Decision` out.

DHCP, TFTP and HTTP each ask `Booter.decide()` once per request; none of them
holds policy. What it gets is a `Client`: what DHCP said of the machine, or what a
TFTP or HTTP request's name said (`names.client`: its MAC and UUID, and whether it
asks for an iPXE script, a pxelinux config or a GRUB config). Like Pixiecore's
`BootSpec`, a `Decision` is a plain frozen value that says everything about one
boot: which node this is, what it boots, how, and with which kernel command line
(made here, from the image catalog, `images/catalog.py`). Boot scripts and configs
are pure renderers of it (`render.py`). The node is chosen by specificity, as matchbox does: a
node registered with this MAC, else one registered with this UUID, else the
default for unknown machines (`[boot] unknown_nodes`); a node's boot-once image
(`node boot-once`, `node reprovision`) is its image until a boot of it reports `booted`. Its settings are
layered the same way: `[boot]`, then `[boot] profile`, then the node's
profiles in order, then the node's own settings, each winning over the one
before (lists such as SSH keys and overlays add up, in that order).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

from . import names
from .config import Config
from .images.catalog import Catalog
from .images.manifest import INITRD, KERNEL, MODULES, ROOTFS, ManifestError
from .inventory.records import NodeSpec, ProfileSpec
from .macaddr import mac_hyphen, normalize_mac
from .proto.pxe import ARCH_BIOS, BootFile, Client, Firmware
from .uki import NAME as UKI

# Boot programs, in the namespace's top level (copied from Debian's packages).
LOADER_BIOS = "undionly.kpxe"
LOADER_UEFI = "snponly.efi"
LOADER_PXELINUX = "pxelinux.0"
# Secure Boot: Debian's signed shim, and beside it Debian's signed GRUB netboot image
# under the name shim loads from the directory of the BOOTP file field.
LOADER_SHIM = "shimx64.efi"
LOADER_GRUB = "grubx64.efi"

DRACUT_LIVE_ARGS = "rd.neednet=1 rd.live.overlay.overlayfs=1"

# What a request for a generated file says of the machine: the firmware that runs what
# it asks for, and the loader a config is for (an iPXE script names none: the node's is kept).
ASKED_FIRMWARE = {"ipxe-script": Firmware.IPXE, "pxelinux-cfg": Firmware.BIOS, "grub-cfg": Firmware.UEFI}
ASKED_LOADER = {"pxelinux-cfg": "pxelinux", "grub-cfg": "grub"}


class Directory(Protocol):
    """The nodes an operator registered: the store, a snapshot of it, or a test's dict."""

    def get_node(self, mac: str) -> NodeSpec | None: ...

    def node_by_uuid(self, uuid: str) -> NodeSpec | None: ...

    def get_profile(self, name: str) -> ProfileSpec | None: ...


@dataclass(frozen=True)
class Decision:
    """Everything about one machine's boot, decided once, rendered by DHCP, TFTP and HTTP."""

    mac: str  # the NIC that asked ("" for pxelinux's `default` and UUID names, which carry none)
    uuid: str | None  # the machine's SMBIOS UUID, when it said
    node: str | None  # the registered node's MAC; None for a machine nobody registered
    image: str
    loader: str  # ipxe | pxelinux | grub
    boot_file: BootFile  # what the DHCP answer names
    fixed_ip: str | None
    hostname: str | None
    http_base: str
    kernel: str  # served names, `images/<image>/vmlinuz`
    initrd: str
    root_urls: tuple[str, ...]  # in the order the initramfs tries them
    profiles: tuple[str, ...] = ()  # the profiles applied, `[boot] profile` first
    ssh_keys: tuple[str, ...] = ()  # root's authorized_keys
    overlays: tuple[str, ...] = ()  # DATA/overlays/NAME, laid on in this order
    labels: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs, for templates
    overlay_url: str | None = None  # where the node fetches its identity and overlays
    # Every live server holding this image verified (`http://HOST[:PORT]`), in the order the
    # node tries them: kernel and initrd fall back across them in the iPXE script, the root
    # URLs on the command line. One entry (this server) when it runs alone.
    mirrors: tuple[str, ...] = ()
    # The CA the node pins for HTTPS (`ca.cpio`), loaded as an initrd before `initrd`;
    # None when the server has no TLS listener.
    ca_initrd: str | None = None
    # Where `image` came from: "node", "profile:NAME" (the strongest profile naming one) or "default".
    image_from: str = "default"
    # The operator's kernel arguments in `cmdline`: `[boot]`'s, then the profiles', then the node's.
    kernel_args: str = ""
    # The whole kernel command line, without this boot's credential (the renderers add it).
    cmdline: str = ""
    # `[security] tpm_measured` with iPXE: the image's UKI (`images/<image>/ramboot-uki.efi`,
    # uki.py), which the script loads instead of kernel and initrd when iPXE runs under UEFI.
    uki: str | None = None

    @property
    def script(self) -> str:
        """The served name of this machine's iPXE script; it carries the MAC and the UUID."""
        return names.script(self.mac, self.uuid)


class Booter:
    """Decides, over the config, the node directory and the image catalog; nothing per request
    (but, with a TTL, a memo of this TTL's decisions)."""

    def __init__(self, config: Config, directory: Directory, server_ip: str,
                 mirrors: Callable[[str, str | None], tuple[str, ...]] | None = None,
                 catalog: Catalog | None = None):
        self.config = config
        self.directory = directory
        self.server_ip = str(ipaddress.ip_address(server_ip))
        # The images and their manifests; None: the data directory's, read per request.
        self.catalog = catalog if catalog is not None else Catalog(config.data_dir)
        # image -> the HTTP bases of the live servers holding it verified (server/cluster.py);
        # none, or an empty answer: this server alone.
        self.mirrors = mirrors
        self.memo_ttl = 0.0  # seconds a client's decision is kept (0: decided per request)
        self._memo: dict[Client, Decision | None] = {}  # with memo_ttl: this TTL's answers
        self._memo_at = 0.0

    def using(self, directory: Directory, manifest_ttl: float = 0.0, server_ip: str | None = None) -> Booter:
        """The same policy over another directory (the DHCP server's snapshot), over the same catalog.

        `manifest_ttl`: keep a decision, and trust a manifest (or its absence), that long.
        DHCP reads the nodes no more often (its snapshot), so its booter decides once per
        client per TTL and stats a manifest as often, not per packet (a stat and a path
        build were a fifth of a DORA's CPU). `server_ip`: the address the URLs name (DHCPv6
        and IPv6 requests get the server's IPv6 address).
        """
        other = Booter(self.config, directory, server_ip or self.server_ip,
                       catalog=self.catalog.with_ttl(manifest_ttl))
        # The cluster's mirror list names each server by the address this one registered with:
        # a booter for the other family names this server alone.
        other.mirrors = self.mirrors if other.server_ip == self.server_ip else None
        other.memo_ttl = manifest_ttl
        return other

    def mirrors_of(self, image: str, group: str | None = None) -> tuple[str, ...]:
        """Where `image` is served, in the order a node should try: this server alone unless
        the cluster knows better (then every live server holding it verified, those of the
        node's `group` first)."""
        found = self.mirrors(image, group) if self.mirrors is not None else ()
        return found or (self.http_base,)

    def _memo_get(self, client: Client) -> tuple[bool, Decision | None]:
        """With a `memo_ttl`, the same client's decision within one TTL is the same value
        (the directory it reads, the DHCP snapshot, changes no faster): DISCOVER and REQUEST
        decide once per DORA. The memo is dropped whole every TTL, so it stays small."""
        now = time.monotonic()
        if now - self._memo_at >= self.memo_ttl or len(self._memo) > 65536:
            self._memo.clear()
            self._memo_at = now
            return False, None
        if client in self._memo:
            return True, self._memo[client]
        return False, None

    @cached_property
    def http_base(self) -> str:
        port = self.config.http.port
        host = f"[{self.server_ip}]" if ":" in self.server_ip else self.server_ip  # RFC 3986 §3.2.2
        return f"http://{host}" + ("" if port == 80 else f":{port}")

    def node_base(self, http_base: str) -> str:
        """Where a node reports and fetches its overlay on the server at `http_base`: its HTTPS
        listener (`[http] https_port`, the same on every server of a cluster), else plain HTTP."""
        port = self.config.http.https_port
        if not port:
            return http_base
        host = http_base.removeprefix("http://")
        host = host.rsplit(":", 1)[0] if not host.endswith("]") and host.count(":") == 1 else host
        return f"https://{host}" + ("" if port == 443 else f":{port}")

    # -- the decision ---------------------------------------------------------------
    def decide(self, client: Client) -> Decision | None:
        """What this machine boots; None: do not boot it (unknown, and `unknown_nodes = "ignore"`;
        or named by a UUID alone that nobody registered, where pxelinux goes on to its MAC).

        A request for a pxelinux or GRUB config (`client.asks`) says which loader asks.
        """
        if self.memo_ttl > 0:
            hit, got = self._memo_get(client)
            if not hit:
                got = self._memo[client] = self._decide(client)
            return got
        return self._decide(client)

    def _decide(self, client: Client) -> Decision | None:
        mac = normalize_mac(client.mac) if client.mac else ""
        spec = self.directory.get_node(mac) if mac else None
        if spec is None and client.uuid:
            spec = self.directory.node_by_uuid(client.uuid)
            if spec is None and not mac:
                return None  # `pxelinux.cfg/<uuid>` of a machine nobody registered: not ours to answer
        boot = self.config.boot
        if spec is None and boot.unknown_nodes == "ignore":
            return None
        layers = self._layers(spec)
        image, image_from = _image_of(spec, layers, boot.default_image)
        asked = ASKED_LOADER.get(client.asks) if client.asks else None
        loader = asked or (spec.loader if spec else None) or boot.loader
        hostname = spec.hostname if spec else None
        node_args = " ".join(a for a in [*(p.kernel_args for p in layers), spec.kernel_args if spec else ""] if a)
        ssh_keys = _union([*(k for p in layers for k in p.ssh_keys), *(spec.ssh_keys if spec else [])])
        overlays = _union([*(o for p in layers for o in p.overlays), *(spec.overlays if spec else [])])
        labels: dict[str, str] = {}
        for p in layers:
            labels.update({str(k): str(v) for k, v in p.labels.items()})
        if spec:
            labels.update({str(k): str(v) for k, v in spec.labels.items()})
        # The node's group: the subnet it asks from, else the one its fixed address is on.
        group = client.group or (self.config.dhcp.group_of(spec.ip) if spec and spec.ip else None)
        mirrors = self.mirrors_of(image, group)
        root_urls = tuple(f"{base}/{names.image_file(image, ROOTFS)}" for base in mirrors)
        overlay_url = f"{self.node_base(self.http_base)}/{names.overlay(mac, client.uuid)}" if mac else None
        return Decision(
            mac=mac,
            uuid=client.uuid,
            node=spec.mac if spec else None,
            image=image,
            loader=loader,
            boot_file=self._boot_file(client, loader, mac, client.uuid),
            fixed_ip=spec.ip if spec else None,
            hostname=hostname,
            http_base=self.http_base,
            kernel=names.image_file(image, KERNEL),
            initrd=names.image_file(image, INITRD),
            root_urls=root_urls,
            profiles=tuple(p.name for p in layers),
            ssh_keys=ssh_keys,
            overlays=overlays,
            labels=tuple(sorted(labels.items())),
            overlay_url=overlay_url,
            mirrors=mirrors,
            ca_initrd=names.CA_BUNDLE if self.config.http.https_port else None,
            image_from=image_from,
            kernel_args=" ".join(a for a in (boot.kernel_args, node_args) if a),
            cmdline=self._cmdline(image, loader, mac, hostname, node_args, root_urls, overlay_url, mirrors),
            uki=names.image_file(image, UKI) if self.config.security.tpm_measured and loader == "ipxe" else None,
        )

    def _layers(self, spec: NodeSpec | None) -> list[ProfileSpec]:
        """The profiles that apply, weakest first: `[boot] profile`, then the node's own.
        A profile that does not exist is skipped (the CLI warns when one is named)."""
        wanted = _union([*([self.config.boot.profile] if self.config.boot.profile else []),
                         *(spec.profiles if spec else [])])
        return [p for p in (self.directory.get_profile(n) for n in wanted) if p is not None]

    def _boot_file(self, client: Client, loader: str, mac: str, uuid: str | None) -> BootFile:
        fw = ASKED_FIRMWARE[client.asks] if client.asks else client.firmware
        if loader == "grub" and fw is Firmware.UEFI and self.config.dhcp.mode != "proxy":
            # UEFI PXE only: shim, then GRUB beside it, then grub/grub.cfg, all over TFTP.
            # Over UEFI HTTP boot that GRUB has no way on (no http module, none loadable
            # under lockdown), and BIOS has no shim: both fall through to iPXE below. So
            # does proxy mode, where GRUB would stop at `grub>` (config.GRUB_PROXY_REFUSED;
            # `node add` and the API refuse it, `doctor` names nodes set so before).
            return BootFile(LOADER_SHIM, http=False)
        if loader == "pxelinux" and fw in (Firmware.BIOS, Firmware.IPXE) and client.arch in (None, ARCH_BIOS):
            # The classic path even from a BIOS iPXE ROM (QEMU's): pxelinux.0 reuses the
            # cached DHCP answer, so this cannot loop.
            return BootFile(LOADER_PXELINUX, http=False)
        if fw is Firmware.IPXE:
            # Already iPXE: straight to its script, so it never chainloads itself.
            return BootFile(f"{self.http_base}/{names.script(mac, uuid)}", http=False)
        if fw is Firmware.UEFI_HTTP:
            return BootFile(f"{self.http_base}/{LOADER_UEFI}", http=True)
        return BootFile(LOADER_UEFI if fw is Firmware.UEFI else LOADER_BIOS, http=False)

    def _cmdline(self, image: str, loader: str, mac: str, hostname: str | None, node_args: str,
                 root_urls: tuple[str, ...], overlay_url: str | None, mirrors: tuple[str, ...]) -> str:
        """The root URLs, the root's sha256 and where to report; BOOTIF when the MAC is known
        (pxelinux appends it itself otherwise: IPAPPEND 2)."""
        try:
            manifest = self.catalog.manifest(image)
            sha: str | None = manifest.files[ROOTFS].sha256
            initrd = manifest.files[INITRD].sha256 if INITRD in manifest.files else None
            dracut = manifest.initramfs == "dracut"
            mods = manifest.files.get(MODULES)
        except (ManifestError, KeyError):
            sha, initrd, dracut, mods = None, None, False, None
        args = [self.config.boot.kernel_args]
        if loader == "pxelinux" or dracut:
            # The classic form (dracut's livenet parses it), the other servers after it.
            args.append(f"root=live:{root_urls[0]}")
            args += [f"ramboot.url={u}" for u in root_urls[1:]]
        else:
            args += [f"ramboot.url={u}" for u in root_urls]
        if dracut:
            # dracut's livenet needs the network up in the initramfs, and an overlayfs
            # (not device-mapper) writable layer over the squashfs. A node that booted over
            # IPv6 (its URLs name the server's IPv6 address) takes its address by SLAAC, as
            # ramboot's initramfs does: dracut's `ip=auto6`.
            args.append(DRACUT_LIVE_ARGS)
            args.append("ip=auto6" if root_urls[0].startswith("http://[") else "ip=dhcp")
        if sha:
            args.append(f"ramboot.sha256={sha}")
        if mods:
            # The kernel's modules layer sits beside the root image: the same servers, in the same order.
            args += [f"ramboot.modules={u.rsplit('/', 1)[0]}/{MODULES}" for u in root_urls]
            args.append(f"ramboot.modules.sha256={mods.sha256}")
        if self.config.scale.seed:
            args.append("ramboot.seed=1")  # serve the verified root to peers (server/seeding.py)
        if initrd:
            # Nothing in the chain verifies the initrd (docs/uefi-bios.md): the command
            # line names the one this boot meant, and the initramfs reports it.
            args.append(f"ramboot.initrd_sha256={initrd}")
        # Reports and the overlay: this server, then the other mirrors (any of them can
        # render the overlay and take reports: they share the database), over HTTPS.
        others = tuple(self.node_base(b) for b in mirrors if b != self.http_base)
        mine = self.node_base(self.http_base)
        args += [f"ramboot.server={b}" for b in (mine, *others)]
        if mac:
            args.append(f"BOOTIF=01-{mac_hyphen(mac)}")
        if hostname:
            args.append(f"ramboot.hostname={hostname}")
        if overlay_url:
            tail = overlay_url.removeprefix(mine)
            args += [f"ramboot.overlay={b}{tail}" for b in (mine, *others)]
        if node_args:
            args.append(node_args)
        return " ".join(a for a in args if a)


def _image_of(spec: NodeSpec | None, layers: list[ProfileSpec], default: str) -> tuple[str, str]:
    """The image and where it came from: a boot-once image (`node boot-once`, until a boot of it
    reports booted), else the node's own, else the strongest profile's, else the default."""
    if spec is not None and spec.boot_once:
        return spec.boot_once, "boot-once"
    if spec is not None and spec.image:
        return spec.image, "node"
    for p in reversed(layers):
        if p.image:
            return p.image, f"profile:{p.name}"
    return default, "default"


def _union(values: Iterable[str]) -> tuple[str, ...]:
    """The values in order, each once."""
    return tuple(dict.fromkeys(v for v in values if v))
