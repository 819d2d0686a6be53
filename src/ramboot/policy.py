"""The one policy seam: "who is this machine" in, a `Decision` out.

DHCP, TFTP and HTTP each ask `Booter.decide()` once per request; none of them
holds policy. Like Pixiecore's `BootSpec`, a `Decision` is a plain frozen value
that says everything about one boot: which node this is, what it boots, how,
and with which kernel command line. Boot scripts and configs are pure renderers
of it (`render.py`). The node is chosen by specificity, as matchbox does: a
node registered with this MAC, else one registered with this UUID, else the
default for unknown machines (`[boot] unknown_nodes`). Its settings are
layered the same way: `[boot]`, then `[boot] profile`, then the node's
profiles in order, then the node's own settings, each winning over the one
before (lists such as SSH keys and overlays add up, in that order).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

from . import names
from .config import Config
from .images.manifest import (
    INITRD,
    KERNEL,
    MANIFEST,
    MODULES,
    ROOTFS,
    Manifest,
    ManifestError,
    images_dir,
    load_manifest,
)
from .inventory.records import NodeSpec, ProfileSpec
from .macaddr import mac_hyphen, normalize_mac
from .proto.pxe import ARCH_BIOS, BootFile, Client, Firmware

# Boot programs, in the namespace's top level (copied from Debian's packages).
LOADER_BIOS = "undionly.kpxe"
LOADER_UEFI = "snponly.efi"
LOADER_PXELINUX = "pxelinux.0"
# Secure Boot: Debian's signed shim, and beside it Debian's signed GRUB netboot image
# under the name shim loads from the directory of the BOOTP file field.
LOADER_SHIM = "shimx64.efi"
LOADER_GRUB = "grubx64.efi"

DRACUT_LIVE_ARGS = "rd.neednet=1 ip=dhcp rd.live.overlay.overlayfs=1"


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

    # Makes `cmdline` when it is first read: DHCP never reads it, and it needs the image's manifest.
    cmdline_of: Callable[[], str] = field(default=lambda: "", compare=False, repr=False)

    @cached_property
    def cmdline(self) -> str:
        """The whole kernel command line (made once, on first use: TFTP and HTTP render it, DHCP does not)."""
        return self.cmdline_of()

    @property
    def script(self) -> str:
        """The served name of this machine's iPXE script; it carries the MAC and the UUID."""
        return names.script(self.mac, self.uuid)


class Booter:
    """Decides; holds the config, the node directory and a manifest cache, nothing per request."""

    def __init__(self, config: Config, directory: Directory, server_ip: str,
                 mirrors: Callable[[str], tuple[str, ...]] | None = None):
        self.config = config
        self.directory = directory
        self.server_ip = str(ipaddress.IPv4Address(server_ip))
        self._manifests: dict[str, tuple[tuple[int, int], Manifest]] = {}  # image -> ((mtime_ns, size), manifest)
        # image -> the HTTP bases of the live servers holding it verified (server/cluster.py);
        # none, or an empty answer: this server alone.
        self.mirrors = mirrors
        self.manifest_ttl = 0.0  # seconds a manifest is trusted without a stat (0: stat every time)
        self._checked: dict[str, tuple[float, Manifest | ManifestError]] = {}  # image -> (when, what)
        self._memo: dict[tuple[Client, str | None], Decision | None] = {}  # with manifest_ttl: this TTL's answers
        self._memo_at = 0.0

    def using(self, directory: Directory, manifest_ttl: float = 0.0) -> Booter:
        """The same policy over another directory (the DHCP server's snapshot); shares the manifest cache.

        `manifest_ttl`: trust a manifest (or its absence) that long without a stat. DHCP
        reads no manifest field (only the boot file, fixed address and hostname), so its
        booter checks as often as it re-reads the nodes, not per packet (a stat and a path
        build were a fifth of a DORA's CPU).
        """
        other = Booter(self.config, directory, self.server_ip)
        other._manifests = self._manifests
        other.mirrors = self.mirrors
        other.manifest_ttl = manifest_ttl
        return other

    def mirrors_of(self, image: str) -> tuple[str, ...]:
        """Where `image` is served, in the order a node should try: this server alone unless
        the cluster knows better (then every live server holding it verified)."""
        found = self.mirrors(image) if self.mirrors is not None else ()
        return found or (self.http_base,)

    def _memo_get(self, client: Client, loader: str | None) -> tuple[bool, Decision | None]:
        """With a `manifest_ttl`, the same client's decision within one TTL is the same value
        (the directory it reads, the DHCP snapshot, changes no faster): DISCOVER and REQUEST
        decide once per DORA. The memo is dropped whole every TTL, so it stays small."""
        now = time.monotonic()
        if now - self._memo_at >= self.manifest_ttl or len(self._memo) > 65536:
            self._memo.clear()
            self._memo_at = now
            return False, None
        key = (client, loader)
        if key in self._memo:
            return True, self._memo[key]
        return False, None

    @cached_property
    def http_base(self) -> str:
        port = self.config.http.port
        return f"http://{self.server_ip}" + ("" if port == 80 else f":{port}")

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
    def decide(self, client: Client, loader: str | None = None) -> Decision | None:
        """What this machine boots; None: do not boot it (unknown, and `unknown_nodes = "ignore"`).

        `loader` is set when the request itself says which loader asks (a pxelinux config).
        """
        if self.manifest_ttl > 0:
            hit, got = self._memo_get(client, loader)
            if not hit:
                got = self._memo[(client, loader)] = self._decide(client, loader)
            return got
        return self._decide(client, loader)

    def _decide(self, client: Client, loader: str | None) -> Decision | None:
        mac = normalize_mac(client.mac) if client.mac else ""
        spec = self.directory.get_node(mac) if mac else None
        if spec is None and client.uuid:
            spec = self.directory.node_by_uuid(client.uuid)
        boot = self.config.boot
        if spec is None and boot.unknown_nodes == "ignore":
            return None
        layers = self._layers(spec)
        image, image_from = _image_of(spec, layers, boot.default_image)
        loader = loader or (spec.loader if spec else None) or boot.loader
        hostname = spec.hostname if spec else None
        node_args = " ".join(a for a in [*(p.kernel_args for p in layers), spec.kernel_args if spec else ""] if a)
        ssh_keys = _union([*(k for p in layers for k in p.ssh_keys), *(spec.ssh_keys if spec else [])])
        overlays = _union([*(o for p in layers for o in p.overlays), *(spec.overlays if spec else [])])
        labels: dict[str, str] = {}
        for p in layers:
            labels.update({str(k): str(v) for k, v in p.labels.items()})
        if spec:
            labels.update({str(k): str(v) for k, v in spec.labels.items()})
        mirrors = self.mirrors_of(image)
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
            cmdline_of=lambda: self._cmdline(image, loader, mac, hostname, node_args, root_urls, overlay_url,
                                             mirrors),
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
        )

    def _layers(self, spec: NodeSpec | None) -> list[ProfileSpec]:
        """The profiles that apply, weakest first: `[boot] profile`, then the node's own.
        A profile that does not exist is skipped (the CLI warns when one is named)."""
        wanted = _union([*([self.config.boot.profile] if self.config.boot.profile else []),
                         *(spec.profiles if spec else [])])
        return [p for p in (self.directory.get_profile(n) for n in wanted) if p is not None]

    def _boot_file(self, client: Client, loader: str, mac: str, uuid: str | None) -> BootFile:
        fw = client.firmware
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
            manifest = self.manifest(image)
            sha: str | None = manifest.files[ROOTFS].sha256
            initrd = manifest.files[INITRD].sha256 if INITRD in manifest.files else None
            dracut = manifest.initramfs == "dracut"
            mods = manifest.files.get(MODULES)
        except (ManifestError, KeyError):
            sha, initrd, dracut, mods = None, None, False, None
        args = [self.config.boot.kernel_args]
        if loader == "pxelinux" or dracut:
            # The classic form; dracut's livenet takes one root, ramboot's initramfs any.
            args.append(f"root=live:{root_urls[0]}")
            if not dracut:
                args += [f"ramboot.url={u}" for u in root_urls[1:]]
        else:
            args += [f"ramboot.url={u}" for u in root_urls]
        if dracut:
            # dracut's livenet needs the network up in the initramfs, and an overlayfs
            # (not device-mapper) writable layer over the squashfs.
            args.append(DRACUT_LIVE_ARGS)
        if sha:
            args.append(f"ramboot.sha256={sha}")
        if mods:
            # The kernel's modules layer sits beside the root image: the same servers, in the same order.
            args += [f"ramboot.modules={u.rsplit('/', 1)[0]}/{MODULES}" for u in root_urls]
            args.append(f"ramboot.modules.sha256={mods.sha256}")
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

    # -- images ---------------------------------------------------------------------
    def manifest(self, image: str) -> Manifest:
        """An image's manifest, read again only when its image.toml changes; raises ManifestError.

        Boot scripts and HTTP ETags ask for it per request: one stat, not a parse.
        """
        if self.manifest_ttl > 0:
            now = time.monotonic()
            seen = self._checked.get(image)
            if seen is None or now - seen[0] >= self.manifest_ttl:
                try:
                    got: Manifest | ManifestError = self._stat_manifest(image)
                except ManifestError as e:
                    got = e
                seen = self._checked[image] = (now, got)
            if isinstance(seen[1], ManifestError):
                raise seen[1]
            return seen[1]
        return self._stat_manifest(image)

    def _stat_manifest(self, image: str) -> Manifest:
        try:
            st = (images_dir(self.config.data_dir) / image / MANIFEST).stat()
        except OSError:
            self._manifests.pop(image, None)
            return load_manifest(self.config.data_dir, image)  # raises the right ManifestError
        key = (st.st_mtime_ns, st.st_size)
        cached = self._manifests.get(image)
        if cached is None or cached[0] != key:
            cached = (key, load_manifest(self.config.data_dir, image))
            self._manifests[image] = cached
        return cached[1]

    def file_sha256(self, image: str, file: str, size: int) -> str | None:
        """The manifest's sha256 for an image file, if the manifest lists it at this size (strong ETags)."""
        try:
            entry = self.manifest(image).files.get(file)
        except ManifestError:
            return None
        return entry.sha256 if entry is not None and entry.size == size else None

    # -- discovery --------------------------------------------------------------------
    def discovered(self, mac: str, uuid: str | None) -> NodeSpec | None:
        """The node to register for a machine that reported its hardware, or None.

        Only in `unknown_nodes = "discover"` and only for a machine nobody registered.
        """
        if self.config.boot.unknown_nodes != "discover" or self.directory.get_node(mac) is not None:
            return None
        if uuid and self.directory.node_by_uuid(uuid) is not None:
            return None  # a known machine on a new NIC: it is registered already
        return NodeSpec(mac=normalize_mac(mac), image=self.config.boot.default_image, uuid=uuid, discovered=True)


def _image_of(spec: NodeSpec | None, layers: list[ProfileSpec], default: str) -> tuple[str, str]:
    """The image and where it came from: the node's own, else the strongest profile's, else the default."""
    if spec is not None and spec.image:
        return spec.image, "node"
    for p in reversed(layers):
        if p.image:
            return p.image, f"profile:{p.name}"
    return default, "default"


def _union(values: Iterable[str]) -> tuple[str, ...]:
    """The values in order, each once."""
    return tuple(dict.fromkeys(v for v in values if v))
