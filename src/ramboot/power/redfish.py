"""Redfish over HTTPS with the standard library: the three requests power needs (read the
system, ComputerSystem.Reset, PATCH its Boot override) do not warrant sushy's dependencies."""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

from . import PowerError
from .bmc import Bmc

_RESET = {"on": "On", "off": "ForceOff", "reset": "ForceRestart"}


class RedfishDriver:
    def __init__(self, bmc: Bmc, timeout: float):
        self.bmc = bmc
        self.timeout = timeout
        host = f"[{bmc.host}]" if ":" in bmc.host else bmc.host
        self.base = f"https://{host}:{bmc.port}"
        self.ctx = ssl.create_default_context()
        if not bmc.verify:
            self.ctx.check_hostname = False
            self.ctx.verify_mode = ssl.CERT_NONE
        self._system = bmc.system

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        auth = base64.b64encode(f"{self.bmc.user}:{self.bmc.password or ''}".encode()).decode()
        req.add_header("Authorization", f"Basic {auth}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        where = f"redfish {self.bmc.host}:{self.bmc.port}"
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self.ctx) as r:
                raw = r.read(1 << 20)
        except urllib.error.HTTPError as e:
            raise PowerError(f"{where}: {method} {path}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            raise PowerError(f"{where}: {getattr(e, 'reason', e)}") from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise PowerError(f"{where}: {method} {path}: the answer is not JSON") from None

    def system(self) -> str:
        """The system's path: the URL's, else the only one the service lists."""
        if not self._system:
            got = self._call("GET", "/redfish/v1/Systems") or {}
            members = [m.get("@odata.id") for m in got.get("Members", []) if isinstance(m, dict)]
            if len(members) != 1 or not isinstance(members[0], str):
                raise PowerError(f"redfish {self.bmc.host}: {len(members)} systems; name one in the URL "
                                 "(redfish://USER:PASS@HOST/redfish/v1/Systems/ID)")
            self._system = members[0]
        return self._system

    def status(self) -> str:
        state = (self._call("GET", self.system()) or {}).get("PowerState")
        return {"On": "on", "Off": "off"}.get(state, "unknown") if isinstance(state, str) else "unknown"

    def power(self, action: str) -> None:
        if action == "cycle":
            if self.status() == "on":
                self._reset("off")
                self._settle("off")
            action = "on"
        self._reset(action)
        if action in ("on", "off"):
            self._settle(action)

    def _reset(self, action: str) -> None:
        self._call("POST", f"{self.system()}/Actions/ComputerSystem.Reset", {"ResetType": _RESET[action]})

    def _settle(self, want: str) -> None:
        deadline = time.monotonic() + self.timeout
        while self.status() != want:
            if time.monotonic() > deadline:
                raise PowerError(f"redfish {self.bmc.host}: still not {want} after {self.timeout:.0f} s")
            time.sleep(0.5)

    def boot_network_once(self) -> None:
        self._call("PATCH", self.system(),
                   {"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}})

    def console_argv(self) -> list[str]:
        # Redfish names a serial console (SerialConsole.SSH) only where the BMC runs one.
        console = ((self._call("GET", self.system()) or {}).get("SerialConsole") or {}).get("SSH") or {}
        if not console.get("ServiceEnabled") or not shutil.which("ssh"):
            raise PowerError(f"redfish {self.bmc.host}: the BMC offers no serial console over SSH")
        port = str(console.get("Port") or 22)
        return ["ssh", "-p", port, f"{self.bmc.user}@{self.bmc.host}"]
