"""The one file namespace that TFTP and HTTP share.

`images/NAME/FILE` is the same file over both. Boot programs live at the top
level (`undionly.kpxe`, `snponly.efi`, `pxelinux.0`, ...), and some names are
generated per request (`pxelinux.cfg/01-<mac>`, `boot/<mac>.ipxe`). No request
ever resolves outside the data directory: `..`, absolute paths, backslashes,
percent-encoded tricks and symlinks that leave the tree are all refused.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from . import names, render
from .access import AccessRule
from .names import PathRefused
from .overlays import sha256_line
from .policy import Booter, Decision
from .proto.pxe import Client, normalize_uuid
from .tls import CaArchive
from .uki import NAME as UKI_NAME
from .uki import UkiCache, UkiError

__all__ = ["GeneratedFile", "Namespace", "PathRefused", "Resolved", "StaticFile", "install_loaders"]

LOADERS_DIR = "loaders"

# Where Debian's packages put the boot programs we serve.
SYSTEM_LOADERS = {
    "undionly.kpxe": "/usr/lib/ipxe/undionly.kpxe",
    "ipxe.efi": "/usr/lib/ipxe/ipxe.efi",
    "snponly.efi": "/usr/lib/ipxe/snponly.efi",
    "pxelinux.0": "/usr/lib/PXELINUX/pxelinux.0",
    "lpxelinux.0": "/usr/lib/PXELINUX/lpxelinux.0",
    "ldlinux.c32": "/usr/lib/syslinux/modules/bios/ldlinux.c32",
    # Secure Boot (loader "grub"): Debian's shim, signed by Microsoft's UEFI CA, and
    # Debian's GRUB netboot image, signed by Debian's key that shim carries. Shim
    # loads `grubx64.efi` from the directory of the BOOTP file field.
    "shimx64.efi": "/usr/lib/shim/shimx64.efi.signed",
    "grubx64.efi": "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",
}


@dataclass(frozen=True)
class StaticFile:
    path: Path
    kind: str  # loader | kernel | initrd | rootfs | manifest | file


@dataclass(frozen=True)
class GeneratedFile:
    data: bytes
    kind: str  # pxelinux-cfg | ipxe-script | grub-cfg (a node's own) | entry-script (the same for all) | ca
    # The NIC it was generated for, when the access rule took the requester for that
    # machine: only then does serving it bind the address and open a boot in its timeline.
    mac: str | None = None


Resolved = StaticFile | GeneratedFile

def install_loaders(data_dir: Path) -> list[str]:
    """Copy the boot programs into the data directory (not symlinks: those would leave it)."""
    dest = Path(data_dir) / LOADERS_DIR
    dest.mkdir(parents=True, exist_ok=True)
    installed = []
    for name, src in SYSTEM_LOADERS.items():
        s = Path(src)
        if not s.is_file():
            continue
        d = dest / name
        if not d.exists() or d.stat().st_size != s.stat().st_size or d.stat().st_mtime < s.stat().st_mtime:
            tmp = d.with_suffix(d.suffix + ".tmp")
            shutil.copyfile(s, tmp)
            os.replace(tmp, d)
        installed.append(name)
    return installed


_KINDS = {"vmlinuz": "kernel", "initrd.img": "initrd", "rootfs.squashfs": "rootfs", "image.toml": "manifest"}


class Archiver(Protocol):
    """Renders a node's overlay archive (`overlays.OverlayRenderer`)."""

    def archive(self, d: Decision) -> bytes: ...


class Namespace:
    def __init__(self, data_dir: Path, booter: Booter, overlays: Archiver | None = None,
                 access: AccessRule | None = None, ca: CaArchive | None = None, booter6: Booter | None = None,
                 uki: UkiCache | None = None):
        self.data_dir = Path(data_dir).resolve()
        self.booter = booter
        # The same policy naming the server's IPv6 address, for requests that come over IPv6:
        # a dual-stack node keeps to the family it booted with.
        self.booter6 = booter6
        self.overlays = overlays
        # Mints each boot's credential when a script or config goes to its node (access.py);
        # None (tests of rendering alone): scripts carry no credential.
        self.access = access
        # `ca.cpio`, the CA nodes pin (tls.py); None: no HTTPS listener, no such file.
        self.ca = ca
        # The images' UKIs (`[security] tpm_measured`: what a UEFI iPXE boot loads); None: not served.
        self.uki = uki
        # The trees files are served from, resolved once (not per request).
        self._images = (self.data_dir / names.IMAGES).resolve()
        self._loaders = (self.data_dir / LOADERS_DIR).resolve()

    def resolve(self, name: str, rooted: bool = False, requester: str | None = None) -> Resolved | None:
        """Map a request to a file or generated content; None if it does not exist.

        `rooted`: a TFTP request, which GRUB sends with a leading `/` (`names.parse_rooted`).
        A node's overlay is never found this way: it holds secrets, and only the
        HTTP layer hands it out, against the boot's credential (`overlay()`).
        `requester`: the client's address, for the access rule.
        """
        return self.lookup(names.parse_rooted(name) if rooted else names.parse(name), requester)

    def booter_for(self, requester: str | None) -> Booter:
        """The booter whose URLs the requester can reach: the IPv6 one for an IPv6 source."""
        if self.booter6 is not None and requester and ":" in requester and not requester.startswith("::ffff:"):
            return self.booter6
        return self.booter

    def lookup(self, name: names.Name | None, requester: str | None = None) -> Resolved | None:
        """A parsed name's file or content; generated ones ask the Booter once, and
        the access rule whether `requester` is that machine (then they carry its credential)."""
        if isinstance(name, names.Overlay):
            return None
        if isinstance(name, names.ImageFile) and name.file == UKI_NAME:
            return self._uki(name.image)
        if isinstance(name, names.ImageFile):
            path = self._inside(self._images, [name.image, name.file])
            return StaticFile(path, _KINDS.get(name.file, "file")) if path else None
        if isinstance(name, names.Loader):
            path = self._inside(self._loaders, [name.file])
            return StaticFile(path, "loader") if path else None
        if isinstance(name, names.CaBundle):
            return GeneratedFile(self.ca.data(), "ca") if self.ca is not None else None
        if isinstance(name, names.EntryScript):
            return GeneratedFile(render.entry_script(self.booter_for(requester).http_base).encode(), "entry-script")
        if isinstance(name, names.GrubConfig) and name.mac is None:
            return GeneratedFile(render.grub_entry().encode(), "entry-script")
        if isinstance(name, names.Script | names.PxelinuxConfig | names.GrubConfig):
            return self._generated(names.client(name, self._group(requester)), requester)
        return None

    def _uki(self, image: str) -> StaticFile | None:
        """An image's UKI, built (again) if its kernel, initrd or the CA archive changed."""
        if self.uki is None or not (self._images / image).is_dir():
            return None
        try:
            return StaticFile(self.uki.path(image, self.ca.data() if self.ca is not None else None), "kernel")
        except UkiError as e:
            raise PathRefused(f"no UKI for image {image}: {e}") from None

    def _group(self, requester: str | None) -> str | None:
        """The group (rack) of the subnet the request came from: its servers come first."""
        return self.booter.config.dhcp.group_of(requester) if requester else None

    def _mint(self, d: Decision, requester: str | None) -> str | None:
        """This boot's credential, if the access rule takes `requester` for the machine."""
        if self.access is None or requester is None:
            return None
        by_uuid = d.node is not None and d.node != d.mac
        return self.access.mint(d.mac, d.node, d.uuid if by_uuid else None, requester)

    def _generated(self, client: Client, requester: str | None) -> GeneratedFile | None:
        """A machine's script or config, as decided for it (None: not ours to answer), with
        this boot's credential when the access rule takes the requester for that machine."""
        d = self.booter_for(requester).decide(client)
        if d is None:
            return None
        # `pxelinux.cfg/default` names no machine: the credential goes to a node's own name.
        token = self._mint(d, requester) if d.mac or d.node else None
        if client.asks == "ipxe-script":
            text = render.ipxe_script(d, token)
        elif client.asks == "grub-cfg":
            text = render.grub_cfg(d, token)
        else:
            text = render.pxelinux_config(d, token)
        return GeneratedFile(text.encode(), client.asks or "pxelinux-cfg", (d.mac or d.node) if token else None)

    def load_options(self, nic: str, uuid: str | None, node: str, token: str, requester: str) -> tuple[str, ...]:
        """The command lines this boot's iPXE script may have handed the kernel, as an EFI image
        gets them (`render.ipxe_load_options`), decided again as the script was. The script's
        name carried the machine's UUID, which the credential keeps only when the node was found
        by it, so each UUID the server knows for the machine (the credential's, the node's, its
        leases') is tried, and none. Empty if none resolves to `node` booting through iPXE."""
        uuids: list[str | None] = [uuid]
        if self.access is not None:
            spec = self.access.directory.get_node(node)
            uuids += [spec.uuid if spec else None, *(x.uuid for x in self.access.directory.leases_of(nic, time.time()))]
        out: dict[str, None] = {}
        for u in dict.fromkeys([*uuids, None]):
            try:
                u = normalize_uuid(u) if u else None
            except ValueError:
                continue
            d = self.booter_for(requester).decide(Client(nic, uuid=u, group=self._group(requester), asks="ipxe-script"))
            if d is not None and (d.node or d.mac) == node and d.loader == "ipxe":
                out[render.ipxe_load_options(d, token)] = None
                if d.uki:
                    out[render.ipxe_uki_load_options(d, token)] = None
        return tuple(out)

    def overlay(self, nic: str, uuid: str | None, node: str, checksum: bool) -> GeneratedFile | None:
        """The node's overlay archive (or its sha256 line), for a credential the access rule
        accepted: decided again for the NIC and UUID the credential was minted for, and
        refused (None) if that no longer resolves to the node it was minted for."""
        if self.overlays is None:
            return None
        d = self.booter.decide(Client(nic, uuid=uuid))
        if d is None or (d.node or d.mac) != node:
            return None
        data = self.overlays.archive(d)
        if checksum:
            data = sha256_line(data, "overlay.tar")
        return GeneratedFile(data, "overlay", nic)

    def _inside(self, root: Path, parts: list[str]) -> Path | None:
        """The real path of root/parts if it is a regular file under root (already resolved), else None."""
        candidate = root.joinpath(*parts)
        try:
            real = candidate.resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, RuntimeError) as e:  # symlink loops and the like
            raise PathRefused(f"unresolvable path: {e}") from None
        if not real.is_relative_to(root):
            raise PathRefused("path leaves the data directory")
        return real if real.is_file() else None
