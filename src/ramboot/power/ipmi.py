"""IPMI 2.0 (RMCP+, lanplus) through pyghmi: the library Confluent and virtualbmc use."""

from __future__ import annotations

import shutil
import time
from typing import Any

from . import PowerError
from .bmc import Bmc

# IPMI chassis control (IPMI 2.0, 28.3): the values pyghmi's set_power has no name for.
_CHASSIS_CONTROL = {"off": 0, "on": 1, "cycle": 2, "reset": 3}


class IpmiDriver:
    def __init__(self, bmc: Bmc, timeout: float):
        self.bmc = bmc
        self.timeout = timeout
        self._cmd: Any = None

    def _session(self) -> Any:
        if self._cmd is None:
            from pyghmi.exceptions import IpmiException
            from pyghmi.ipmi import command

            try:
                self._cmd = command.Command(bmc=self.bmc.host, userid=self.bmc.user, password=self.bmc.password or "",
                                            port=self.bmc.port, keepalive=False)
            except (IpmiException, OSError) as e:
                raise PowerError(f"ipmi {self.bmc.host}:{self.bmc.port}: {_why(e)}") from None
        return self._cmd

    def _raw(self, netfn: int, command: int, data: list[int]) -> dict[str, Any]:
        from pyghmi.exceptions import IpmiException

        try:
            # A short wait per try (pyghmi sends again): a BMC busy starting or killing its
            # machine may drop one request, which should cost a retry, not the whole timeout.
            r: dict[str, Any] = self._session().raw_command(netfn=netfn, command=command, data=data,
                                                            timeout=min(3.0, self.timeout))
        except (IpmiException, OSError) as e:
            raise PowerError(f"ipmi {self.bmc.host}:{self.bmc.port}: {_why(e)}") from None
        if "error" in r:
            raise PowerError(f"ipmi {self.bmc.host}:{self.bmc.port}: {r['error']}")
        return r

    def status(self) -> str:
        r = self._raw(0x00, 0x01, [])  # Get Chassis Status: bit 0 of the first byte is power on
        return "on" if bytes(r["data"])[0] & 1 else "off"

    def power(self, action: str) -> None:
        now = self.status()
        if action == now:
            return  # on when on, off when off: nothing to do (a BMC may not answer such a request at all)
        if action == "cycle" and now == "off":
            action = "on"  # IPMI refuses a cycle of a machine that is off; the operator meant "up, afresh"
        self._raw(0x00, 0x02, [_CHASSIS_CONTROL[action]])
        if action in ("on", "off"):
            self._settle(action)

    def _settle(self, want: str) -> None:
        """Until the BMC reports the state asked for (a VM behind ipmi_sim takes a moment)."""
        deadline = time.monotonic() + self.timeout
        while self.status() != want:
            if time.monotonic() > deadline:
                raise PowerError(f"ipmi {self.bmc.host}:{self.bmc.port}: still not {want} after {self.timeout:.0f} s")
            time.sleep(0.5)

    def boot_network_once(self) -> None:
        # Set System Boot Options, parameter 5 (boot flags): valid, this boot only, PXE.
        self._raw(0x00, 0x08, [0x05, 0x80, 0x04, 0x00, 0x00, 0x00])

    def console_argv(self) -> list[str]:
        if not shutil.which("ipmitool"):
            raise PowerError("ipmitool is not installed (apt-get install ipmitool)")
        # The password goes through the environment (-E), never the command line.
        return ["ipmitool", "-I", "lanplus", "-H", self.bmc.host, "-p", str(self.bmc.port), "-U", self.bmc.user, "-E",
                "sol", "activate"]


def _why(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() not in ("", "None") else ""
    return text[:200] or "no answer (is the address and port right, and IPMI over LAN on?)"
