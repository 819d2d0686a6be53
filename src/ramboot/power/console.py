"""`[console] capture = true`: every node's serial console, all the time, as conman and Confluent
keep it. Each node with an IPMI BMC (Serial-over-LAN through pyghmi) or a libvirt domain (its
console stream through libvirt-python) has a reader thread; its lines go to DATA/consoles/MAC.log
(rotated to MAC.log.1 past `[console] max_kib`) and, with the time each arrived, to the database,
where `node show` and the API show them with the boot they fall in: a panic or a hung initramfs
is there without anyone attaching. Redfish names no
standard console stream: such nodes are not captured.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Config
from ..inventory.store import Store
from .bmc import AutoUnresolved, Bmc

log = logging.getLogger("ramboot.console")

RESCAN = 15.0  # seconds between looks for nodes that gained or lost a BMC
RETRY = 5.0  # seconds before a lost console is opened again
LINE_MAX = 200  # characters of a line kept in the database
KEEP_BOOTS = 5  # a node keeps the console lines of about this many boots in the database (the file keeps more)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>cDEHM78]")
# A firmware starting again: the next lines belong to a new boot (the per-boot cap starts over).
_FIRMWARE = re.compile(r"SeaBIOS \(version|iPXE initialising|BdsDxe:|UEFI firmware")


class NodeConsole:
    """One node's console: raw bytes in, a log file and line events out."""

    def __init__(self, mac: str, path: Path, max_bytes: int, per_boot: int,
                 record: Callable[[str, list[tuple[float, str]]], None]):
        self.mac = mac
        self.path = path
        self.max_bytes = max_bytes
        self.per_boot = per_boot
        self.record = record
        self.buf = b""
        self.lines = 0
        self.lock = threading.Lock()

    def feed(self, data: bytes) -> None:
        with self.lock:
            self._write(data)
            self.buf += data
            *done, self.buf = re.split(rb"\r\n|\n|\r", self.buf)
            if len(self.buf) > 4096:  # a line that never ends is cut, not kept whole
                done.append(self.buf)
                self.buf = b""
            now, keep = time.time(), []
            for raw in done:
                text = _ANSI.sub("", raw.decode("utf-8", "replace")).strip()
                if not text:
                    continue
                if _FIRMWARE.search(text):
                    self.lines = 0
                if self.lines < self.per_boot:
                    self.lines += 1
                    keep.append((now, text[:LINE_MAX]))
        if keep:
            try:
                self.record(self.mac, keep)
            except Exception as e:  # the log file has them; the database may answer again later
                log.warning("console %s: %d lines not stored: %s", self.mac, len(keep),
                            str(e).splitlines()[0] if str(e) else e)

    def _write(self, data: bytes) -> None:
        try:
            if self.path.exists() and self.path.stat().st_size + len(data) > self.max_bytes:
                self.path.replace(self.path.with_name(self.path.name + ".1"))
            with open(self.path, "ab") as f:
                f.write(data)
        except OSError as e:
            log.warning("console %s: %s: %s", self.mac, self.path, e.strerror)


def _libvirt_reader(bmc: Bmc, sink: NodeConsole, stop: threading.Event) -> None:
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open(bmc.uri or "qemu:///system")
    try:
        dom = conn.lookupByName(bmc.domain)
        while not stop.is_set():
            if not dom.isActive():
                stop.wait(1.0)
                continue
            stream = conn.newStream(0)
            try:
                dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
                while not stop.is_set():
                    data = stream.recv(4096)
                    if not isinstance(data, bytes) or not data:
                        break
                    sink.feed(data)
            except libvirt.libvirtError:
                pass
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            stop.wait(0.5)
    finally:
        conn.close()


def _ipmi_reader(bmc: Bmc, sink: NodeConsole, stop: threading.Event) -> None:
    from pyghmi.ipmi import console

    state: dict[str, Any] = {"error": None}

    def handler(data: Any) -> None:
        if isinstance(data, dict):
            if "error" in data:
                state["error"] = data["error"]
            return
        sink.feed(data.encode("utf-8", "replace") if isinstance(data, str) else bytes(data))

    sol = console.Console(bmc=bmc.host, userid=bmc.user, password=bmc.password or "", iohandler=handler,
                          port=bmc.port, force=True)
    try:
        while not stop.is_set() and state["error"] is None:
            console.Console.wait_for_rsp(timeout=1)
    finally:
        with contextlib.suppress(Exception):
            sol.close()
    if state["error"]:
        raise RuntimeError(str(state["error"]))


class ConsoleCapture:
    """The reader threads, one per node with a capturable BMC; `close()` stops them."""

    def __init__(self, config: Config, store: Store):
        self.config = config
        self.store = store
        keep = config.console.lines_per_boot * KEEP_BOOTS
        self.record: Callable[[str, list[tuple[float, str]]], None] = \
            lambda mac, lines: store.power.add_console_lines(mac, lines, keep)
        self.dir = config.data_dir / "consoles"
        self.stop = threading.Event()
        self.readers: dict[str, tuple[threading.Thread, str]] = {}  # mac -> (thread, the BMC URL it reads)
        self._scan = threading.Thread(target=self._run, name="console-scan", daemon=True)

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._scan.start()

    async def close(self) -> None:
        self.stop.set()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.rescan()
            except Exception as e:  # a database that does not answer: try again at the next scan
                log.warning("console capture: %s", str(e).splitlines()[0] if str(e) else e)
            self.stop.wait(RESCAN)

    def rescan(self) -> None:
        for node in self.store.nodes.all():
            try:
                bmc = self.store.power.bmc(node.mac)
            except AutoUnresolved:
                continue  # @auto before the node's first report: captured once it has reported
            if bmc is None or bmc.scheme == "redfish":
                continue
            seen = self.readers.get(node.mac)
            if seen is not None and seen[0].is_alive() and seen[1] == bmc.redacted():
                continue
            sink = NodeConsole(node.mac, self.dir / f"{node.mac.replace(':', '-')}.log",
                               self.config.console.max_kib << 10, self.config.console.lines_per_boot, self.record)
            t = threading.Thread(target=self._keep, args=(bmc, sink), name=f"console-{node.mac}", daemon=True)
            self.readers[node.mac] = (t, bmc.redacted())
            t.start()

    def _keep(self, bmc: Bmc, sink: NodeConsole) -> None:
        """One node's console, opened again whenever it drops, until the capture stops or the BMC changes."""
        read = _ipmi_reader if bmc.scheme == "ipmi" else _libvirt_reader
        said = ""
        while not self.stop.is_set():
            try:
                read(bmc, sink, self.stop)
            except Exception as e:
                why = str(e).splitlines()[0] if str(e) else type(e).__name__
                # Said once at info; the same reason again (a BMC that stays down) only at debug.
                log.log(logging.DEBUG if why == said else logging.INFO, "console %s: %s; trying again every %.0f s",
                        sink.mac, why, RETRY)
                said = why
            if self.readers.get(sink.mac, (None, ""))[1] != bmc.redacted():
                return
            self.stop.wait(RETRY)
