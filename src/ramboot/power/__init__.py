"""Power and boot device through a node's BMC: one small driver per kind of BMC.

A driver does four things, each one blocking call with its own timeout: read the power
state, change it, make the next boot a network boot, and name its serial console. The
fleet-wide parts (targets, waves, events, counters) are in `power/fleet.py`.
"""

from __future__ import annotations

from typing import Protocol

from .bmc import Bmc

ACTIONS = ("on", "off", "cycle", "reset", "status")
TIMEOUT = 20.0  # seconds a BMC gets to answer one request


class PowerError(Exception):
    """The BMC did not answer, or refused: one line, no password in it."""


class Driver(Protocol):
    def status(self) -> str:
        """"on" or "off"."""

    def power(self, action: str) -> None:
        """on | off | cycle | reset: done when the BMC has taken it."""

    def boot_network_once(self) -> None:
        """The next boot (only) is a network boot."""

    def console_argv(self) -> list[str]:
        """A command that attaches this terminal to the node's serial console."""


def driver_for(bmc: Bmc, timeout: float = TIMEOUT) -> Driver:
    if bmc.scheme == "ipmi":
        from .ipmi import IpmiDriver

        return IpmiDriver(bmc, timeout)
    if bmc.scheme == "redfish":
        from .redfish import RedfishDriver

        return RedfishDriver(bmc, timeout)
    from .libvirt import LibvirtDriver

    return LibvirtDriver(bmc, timeout)
