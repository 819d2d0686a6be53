"""What the storm's parts share: the network plan, one client's result, the generator's
parameters and output (JSON between the orchestrator and its generator processes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NotRequired, TypedDict

POOL_NET = "10.77.16.0/20"
POOL = ("10.77.16.0", "10.77.31.254")
TFTP_PORT = 69
HTTP_PORT = 80
BLAST_PORT = 19999
SEED_PORT = 8790  # ramboot.server.seeding.SEED_PORT (not imported: the generator loads no server code)

# A PXE ROM that gets no DHCP answer gives up after its four tries (60 s) and the
# firmware moves on; a BIOS set to retry the boot (SeaBIOS `reboot-timeout`, a BMC's
# "retry network boot") starts the whole boot again. The simulated client does the same,
# this many times: the level where a firmware that gave up can be retried.
BOOT_RETRIES = 2


@dataclass
class ClientResult:
    mac: str
    ok: bool = False
    error: str = ""
    ip: str = ""
    start: float = 0.0
    total: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    bytes: int = 0
    dhcp_retries: int = 0
    tftp_retries: int = 0
    restarts: int = 0  # whole boots started over (the firmware's retry) after a server died
    boot_retries: int = 0  # the same count, under the name the soak reads
    servers: list[str] = field(default_factory=list)  # which server answered each DHCP ACK

    def record(self) -> ClientRecord:
        return ClientRecord(
            mac=self.mac, ok=self.ok, error=self.error, ip=self.ip, start=self.start, total=self.total,
            phases=dict(self.phases), bytes=self.bytes, dhcp_retries=self.dhcp_retries,
            tftp_retries=self.tftp_retries, restarts=self.restarts, boot_retries=self.boot_retries,
            servers=list(self.servers),
        )


class ClientRecord(TypedDict):
    """A `ClientResult` as the generators write it (`dataclasses.asdict`)."""

    mac: str
    ok: bool
    error: str
    ip: str
    start: float
    total: float
    phases: dict[str, float]
    bytes: int
    dhcp_retries: int
    tftp_retries: int
    restarts: int
    boot_retries: int
    servers: list[str]


class Failed(Exception):
    pass


class GaveUp(Failed):
    """The firmware's DHCP gave up: the boot as a whole may be retried (BOOT_RETRIES)."""


Mode = Literal["bound", "storm"]


class Params(TypedDict):
    """The load generators' parameters (`orchestrator.client_params()`), plus each process's share."""

    n: int
    ifname: str
    server: str
    blksize: int
    windowsize: int
    ramp: float
    timeout: float
    references: dict[str, tuple[str, str]]  # name -> (path, sha256)
    manifest: dict[str, str]  # image file name -> sha256
    mac_prefix: str
    bound_seconds: float
    boot_retries: int
    seed: bool
    mode: NotRequired[Mode]
    first: NotRequired[int]
    count: NotRequired[int]
    start_at: NotRequired[float]


class BoundOutput(TypedDict):
    bound_mb_s: float


class StormOutput(TypedDict):
    wall: float
    cpu_s: float
    stray_dhcp: int
    results: list[ClientRecord]
