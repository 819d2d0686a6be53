"""libvirt domains through libvirt-python: the workstation's VMs, and the peer sushy-emulator drives."""

from __future__ import annotations

import shutil
import time
import xml.etree.ElementTree as ET
from typing import Any

from . import PowerError
from .bmc import Bmc

DEFAULT_URI = "qemu:///system"


class LibvirtDriver:
    def __init__(self, bmc: Bmc, timeout: float):
        self.bmc = bmc
        self.uri = bmc.uri or DEFAULT_URI
        self.timeout = timeout
        self._dom: Any = None

    def _domain(self) -> Any:
        if self._dom is None:
            try:
                import libvirt
            except ImportError:
                raise PowerError("libvirt-python is not installed (pip install libvirt-python)") from None
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors are raised, not printed
            try:
                conn = libvirt.open(self.uri)
                self._dom = conn.lookupByName(self.bmc.domain)
            except libvirt.libvirtError as e:
                raise PowerError(f"libvirt {self.uri} {self.bmc.domain}: {e.get_error_message()}") from None
        return self._dom

    def _do(self, what: str, fn: Any, *args: Any) -> Any:
        import libvirt

        try:
            return fn(*args)
        except libvirt.libvirtError as e:
            raise PowerError(f"libvirt {self.bmc.domain}: {what}: {e.get_error_message()}") from None

    def status(self) -> str:
        dom = self._domain()
        return "on" if self._do("state", dom.isActive) else "off"

    def power(self, action: str) -> None:
        dom = self._domain()
        on = self.status() == "on"
        if action == "on" and not on:
            self._do("start", dom.create)
        elif action == "off" and on:
            self._do("destroy", dom.destroy)
        elif action == "reset":
            if not on:
                raise PowerError(f"libvirt {self.bmc.domain}: reset: the domain is off")
            self._do("reset", dom.reset, 0)
        elif action == "cycle":
            if on:
                self._do("destroy", dom.destroy)
                self._settle("off")
            self._do("start", dom.create)

    def _settle(self, want: str) -> None:
        deadline = time.monotonic() + self.timeout
        while self.status() != want:
            if time.monotonic() > deadline:
                raise PowerError(f"libvirt {self.bmc.domain}: still not {want} after {self.timeout:.0f} s")
            time.sleep(0.2)

    def boot_network_once(self) -> None:
        """libvirt has no one-shot boot device: the domain's network interface is made its first
        boot device (a diskless node boots from the network every time anyway)."""
        import libvirt

        dom = self._domain()
        root = ET.fromstring(self._do("read the definition", dom.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE))
        os_el = root.find("os")
        if os_el is None:
            raise PowerError(f"libvirt {self.bmc.domain}: the definition has no <os>")
        boots = os_el.findall("boot")
        if [b.get("dev") for b in boots][:1] == ["network"] or root.find(".//interface/boot") is not None:
            return
        for b in boots:
            os_el.remove(b)
        ET.SubElement(os_el, "boot", dev="network")
        self._do("define", dom.connect().defineXML, ET.tostring(root, encoding="unicode"))

    def console_argv(self) -> list[str]:
        if not shutil.which("virsh"):
            raise PowerError("virsh is not installed (apt-get install libvirt-clients)")
        return ["virsh", "-c", self.uri, "console", "--force", self.bmc.domain]
