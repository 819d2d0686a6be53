"""The REST API's pydantic models: request and response bodies, and the OpenAPI source.

They live beside the store (not in the server) so the CLI's remote mode can
parse the same shapes without importing aiohttp.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError, field_validator

from ..config import no_control_chars
from ..macaddr import normalize_mac
from ..power.bmc import parse as parse_bmc
from ..power.bmc import reported_address
from ..proto import pxe

IMAGE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
HOSTNAME = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
STAGE = r"^[a-z][a-z0-9-]{0,31}$"
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


def unix_time(t: float) -> datetime:
    """The store keeps unix times; the API says them in ISO 8601, in UTC."""
    return datetime.fromtimestamp(t, UTC)


def unix_time_or_none(t: float | None) -> datetime | None:
    return None if t is None else unix_time(t)


def _from_unix(v: object) -> object:
    return unix_time(v) if isinstance(v, int | float) and not isinstance(v, bool) else v


def _iso(v: datetime) -> str:
    return v.astimezone(UTC).isoformat()


# Every time the API answers: ISO 8601 with its timezone, e.g. "2026-12-06T04:01:02.123456+00:00".
Time = Annotated[datetime, BeforeValidator(_from_unix), PlainSerializer(_iso, return_type=str, when_used="json")]


def normalize_uuid(v: str) -> str:
    """An SMBIOS UUID in lower-case 8-4-4-4-12 form; ValueError if it is none, or null."""
    if not _UUID.match(v):
        raise ValueError("not a UUID")
    out = pxe.normalize_uuid(v)
    if out is None:
        raise ValueError("a null UUID (all zeros or all ones) names no machine")
    return out


_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
              "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def ssh_public_key(v: str) -> str:
    """One OpenSSH public key line (`TYPE BASE64 [COMMENT]`); ValueError otherwise."""
    line = no_control_chars(v.strip())  # one key per entry: a newline would smuggle in a second
    parts = line.split()
    if len(parts) < 2 or parts[0] not in _KEY_TYPES or not re.match(r"^[A-Za-z0-9+/=]+$", parts[1]):
        raise ValueError("not an OpenSSH public key line (TYPE BASE64 [COMMENT])")
    return line


def image_name(v: str) -> str:
    """An image's name (DATA/images/NAME); ValueError otherwise."""
    if not re.fullmatch(IMAGE_NAME.strip("^$"), v):
        raise ValueError(f"not an image name: {v!r} (letters, digits, '.', '_', '-', at most 128)")
    return v


def plain_name(v: str) -> str:
    """A profile or overlay name: letters, digits, `.`, `_`, `-`; no path."""
    if not _NAME.fullmatch(v):
        raise ValueError(f"not a name: {v!r} (letters, digits, '.', '_', '-')")
    return v


# What a pattern means, in words: a user is never shown the regular expression.
_PATTERN_WORDS = {
    "hostname": "a hostname is labels of letters, digits and '-' (not first or last, at most 63 each) "
                "joined by '.'",
    "image": "an image name is letters, digits, '.', '_' and '-', starting with a letter or digit, "
             "at most 128",
    "stage": "a stage is lower-case letters, digits and '-', starting with a letter, at most 32",
}


def in_words(e: ValidationError) -> tuple[str, str]:
    """A pydantic error's first complaint: (the field's dotted path, what is wrong, in words)."""
    first = e.errors()[0]
    loc = [str(p) for p in first["loc"]]
    if first["type"] == "extra_forbidden":
        return ".".join(loc), "unknown field"
    if first["type"] == "string_pattern_mismatch":
        what = _PATTERN_WORDS.get(loc[-1] if loc else "", "not in the expected form")
        return ".".join(loc), f"{what}; got {first['input']!r}"
    return ".".join(loc), first["msg"].removeprefix("Value error, ")


def validation_message(e: ValidationError) -> str:
    """A pydantic error as one line: `field: what is wrong`."""
    where, words = in_words(e)
    return f"{where or 'body'}: {words}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _plain(v: object) -> object:
    """Before any other check: a string with a control character is refused by name (it would
    reach a boot script or a command line: docs/api.md)."""
    return no_control_chars(v) if isinstance(v, str) else v


def _plain_labels(v: object) -> object:
    if isinstance(v, dict):
        for k, val in v.items():
            _plain(k)
            _plain(val)
    return v


BMC_HELP = ("the BMC: ipmi://USER:PASS@HOST[:PORT], redfish://USER:PASS@HOST[:PORT][/redfish/v1/Systems/ID]"
            "[?verify=false] or libvirt:DOMAIN[?uri=URI]; read back with the password as ***, which keeps it")


class _Settings(_Strict):
    """What nodes and profiles both set: labels, SSH keys and the BMC, checked alike."""

    @field_validator("bmc", check_fields=False)
    @classmethod
    def _bmc(cls, v: str | None) -> str | None:
        if not v:
            return None
        parse_bmc(v)  # a BmcError is a ValueError: one line, no password in it
        return v

    @field_validator("labels", mode="before", check_fields=False)
    @classmethod
    def _labels(cls, v: object) -> object:
        return _plain_labels(v)

    @field_validator("ssh_keys", check_fields=False)
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        return [ssh_public_key(k) for k in v]


class NodeIn(_Settings):
    """What an operator sets on a node (PUT replaces all of it)."""

    image: str | None = Field(None, pattern=IMAGE_NAME, description="image name; default: boot.default_image")
    hostname: str | None = Field(None, pattern=HOSTNAME, max_length=253)
    ip: str | None = Field(None, description="fixed IPv4 address (full DHCP mode)")
    loader: Literal["ipxe", "pxelinux", "grub"] | None = None
    uuid: str | None = Field(None, description="SMBIOS UUID (DHCP option 97)")
    kernel_args: str = Field("", max_length=4096)
    labels: dict[str, str] = {}
    ssh_keys: list[str] = Field([], description="public keys for root's authorized_keys", max_length=256)
    profiles: list[str] = Field([], description="profiles the node inherits, in order; its own settings win")
    overlays: list[str] = Field([], description="overlays (DATA/overlays/NAME) laid on at boot, in order")
    bmc: str | None = Field(None, description=BMC_HELP)

    @field_validator("image", "hostname", "kernel_args", mode="before")
    @classmethod
    def _no_control(cls, v: object) -> object:
        return _plain(v)

    @field_validator("profiles", "overlays")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        return [plain_name(n) for n in v]

    @field_validator("ip")
    @classmethod
    def _ip(cls, v: str | None) -> str | None:
        return None if v is None else str(ipaddress.IPv4Address(v))

    @field_validator("uuid")
    @classmethod
    def _uuid(cls, v: str | None) -> str | None:
        return None if v is None else normalize_uuid(v)


class NodePatch(_Strict):
    """A JSON merge patch of a node (RFC 7396): a key sets, null unsets (back to the default), an
    absent key keeps; `labels` merge key by key. The node it makes is checked as a NodeIn."""

    image: str | None = None
    hostname: str | None = None
    ip: str | None = None
    loader: Literal["ipxe", "pxelinux", "grub"] | None = None
    uuid: str | None = None
    kernel_args: str | None = None
    labels: dict[str, str | None] | None = None
    ssh_keys: list[str] | None = None
    profiles: list[str] | None = None
    overlays: list[str] | None = None


class NodeCreate(NodeIn):
    mac: str

    @field_validator("mac")
    @classmethod
    def _mac(cls, v: str) -> str:
        return normalize_mac(v)


class ProfileIn(_Settings):
    """A named set of settings that nodes inherit (PUT replaces all of it)."""

    image: str | None = Field(None, pattern=IMAGE_NAME)
    kernel_args: str = Field("", max_length=4096)
    ssh_keys: list[str] = Field([], max_length=256)
    overlays: list[str] = []
    labels: dict[str, str] = {}
    bmc: str | None = Field(None, description=BMC_HELP)

    @field_validator("image", "kernel_args", mode="before")
    @classmethod
    def _no_control(cls, v: object) -> object:
        return _plain(v)

    @field_validator("overlays")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        return [plain_name(n) for n in v]


class ProfileOut(ProfileIn):
    name: str
    warnings: list[str] = []  # on PUT only: an image not built yet


class Effective(BaseModel):
    """What a node really boots, as `policy.decide()` says, with where each part came from."""

    image: str | None = Field(None, description="null: it boots nothing (unknown_nodes = \"ignore\")")
    image_from: str | None = Field(None, description="node, profile:NAME or default")
    loader: str | None = None
    kernel_args: str = Field("", description="[boot]'s, the profiles' and the node's kernel arguments")
    ip: str | None = None
    ip_from: Literal["fixed", "lease"] | None = None
    lease_expires: Time | None = None
    profiles: list[str] = Field([], description="the profiles applied, [boot] profile first")
    last_seen: Time | None = Field(None, description="its newest event or hardware report")
    last_boot: Time | None = Field(None, description="when its last boot began")
    bmc: str | None = Field(None, description="the BMC it is powered through, password as ***: its own or its "
                            "profile's, `@auto` resolved from its latest report (node pages only)")


class NodeOut(BaseModel):
    mac: str
    state: Literal["registered", "discovered", "seen"] = Field(
        "registered", description="registered by an operator, discovered (registered by `unknown_nodes = "
        "\"discover\"`), or only seen (it asked or booted, nobody registered it)")
    image: str | None
    hostname: str | None
    ip: str | None
    loader: str | None
    uuid: str | None
    kernel_args: str
    labels: dict[str, str]
    discovered: bool
    ssh_keys: list[str] = []
    profiles: list[str] = []
    overlays: list[str] = []
    bmc: str | None = Field(None, description="the BMC URL, its password shown as ***")
    boot_once: str | None = Field(None, description="the image of the next boot only (`node boot-once`)")
    stage: str | None = Field(None, description="stage of the last boot")
    updated: Time | None = Field(None, description="the time of the last boot's newest event")
    effective: Effective = Effective()


class EventOut(BaseModel):
    stage: str
    source: Literal["server", "node"] | str
    at: Time
    detail: dict[str, Any]


class ConsoleLineOut(BaseModel):
    at: Time
    line: str


class BootOut(BaseModel):
    """One boot, from its first DHCP/loader/script event to `booted` or `failed`."""

    stage: str
    started: Time
    updated: Time
    duration: float | None = Field(None, description="seconds to `booted`")
    download_mbps: float | None = None
    failure: str | None = None
    contested: bool = Field(False, description="a second claim was made on this boot's credential")
    events: list[EventOut]
    console: list[ConsoleLineOut] = Field([], description="its serial console's lines (`[console] capture`)")


# A hardware report is kept per boot (store.hardware.add): unknown keys are dropped (a newer
# initramfs may send more; nothing unread is stored), strings and lists are cut to these.
REPORT_STR = 128
REPORT_LIST = 64


def _cut(v: object) -> object:
    return v[:REPORT_STR] if isinstance(v, str) else v


Text = Annotated[str, BeforeValidator(_cut)]


def _first(v: object) -> object:
    return v[:REPORT_LIST] if isinstance(v, list) else v


NIC_ADDRESSES = 8
Address = Annotated[str, BeforeValidator(lambda v: v[:50] if isinstance(v, str) else v)]  # "addr/len", IPv6 at most 49


def _first_addresses(v: object) -> object:
    return v[:NIC_ADDRESSES] if isinstance(v, list) else v


class _Report(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Cpu(_Report):
    model: Text = ""
    count: int = Field(0, ge=0)


class Nic(_Report):
    name: Text
    mac: Text | None = None
    speed_mbps: int | None = None
    # The global addresses the NIC holds (IPv4 and IPv6), as the initramfs saw them; a NIC has a
    # handful, so a hostile report cannot make them most of its size.
    addresses: Annotated[list[Address], BeforeValidator(_first_addresses)] = []


class Disk(_Report):
    name: Text
    size_bytes: int | None = Field(None, ge=0)
    model: Text | None = None


class Dmi(_Report):
    vendor: Text | None = None
    product: Text | None = None
    serial: Text | None = None
    uuid: Text | None = None


def _bmc_mac(v: object) -> str | None:
    if not isinstance(v, str):
        return None
    try:
        mac = normalize_mac(v)
    except ValueError:
        return None
    return None if mac in ("00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff") else mac


class BmcReport(_Report):
    """The machine's own BMC, as its initramfs read it in band (`ipmitool lan print` over KCS):
    each field only when well formed, else null (a bad field never costs the whole report)."""

    ip: Annotated[str | None, BeforeValidator(reported_address)] = None
    mac: Annotated[str | None, BeforeValidator(_bmc_mac)] = None
    ip_source: Literal["dhcp", "static", "bios", "other"] | None = None
    netmask: Annotated[str | None, BeforeValidator(reported_address)] = None
    gateway: Annotated[str | None, BeforeValidator(reported_address)] = None

    @field_validator("ip_source", mode="before")
    @classmethod
    def _source(cls, v: object) -> object:
        return v if v in ("dhcp", "static", "bios", "other") else None


class InventoryReport(_Report):
    """A node's hardware, as its initramfs reports it (CONTRACTS.md): known keys only, strings cut
    to REPORT_STR characters and lists to REPORT_LIST items, so a report stays a few KiB."""

    cpu: Cpu = Cpu()
    memory_kib: int = Field(0, ge=0)
    nics: Annotated[list[Nic], BeforeValidator(_first)] = []
    disks: Annotated[list[Disk], BeforeValidator(_first)] = []
    dmi: Dmi = Dmi()
    bmc: BmcReport | None = Field(None, description="the machine's BMC, read in band; null: none read")

    @field_validator("bmc", mode="before")
    @classmethod
    def _bmc(cls, v: object) -> object:
        return v if isinstance(v, dict) else None


class InventoryOut(BaseModel):
    at: Time
    report: InventoryReport


class TpmOut(BaseModel):
    """A node's enrolled TPM (tpm_gate.py): its EK's fingerprint and whether it is trusted."""

    state: Literal["pending", "trusted"]
    ek_fingerprint: str
    ek_cert: str | None = None
    seen: Time
    trusted_at: Time | None = None
    refused_fingerprint: str | None = None  # the last other TPM that asked for this node's secrets
    refused_at: Time | None = None
    signed_reports: bool = False  # this boot's reports must carry its AK's signature
    measured_images: list[str] = []  # images whose PCR values are recorded (tpm_measured)
    pcr_refused: str | None = None  # the last boot refused for a changed PCR, and which
    pcr_refused_at: Time | None = None


class SeedingOut(BaseModel):
    """A booted node serving its verified root to peers, in its last boot (docs/scale.md)."""

    state: Literal["seeding", "skipped"]  # skipped: a peer refused it; no more downloads this boot
    bytes_served: int = 0  # as the downloading nodes reported them
    downloads: int = 0
    reason: str = ""  # why it was skipped


class NodeDetail(NodeOut):
    inventory: InventoryOut | None = None
    last_boot: BootOut | None = None
    tpm: TpmOut | None = None  # None: no TPM enrolled; its secrets are as safe as the provisioning network
    seeding: SeedingOut | None = None
    warnings: list[str] = []  # on PUT/POST only: what will keep the node from booting as registered


class NodeStatus(BaseModel):
    """One row of the status page: registered or not, with its last boot."""

    mac: str
    registered: bool
    discovered: bool = False
    hostname: str | None = None
    image: str | None = None
    inventory: InventoryOut | None = None
    last_boot: BootOut | None = None
    effective: Effective = Effective()


B64 = r"^[A-Za-z0-9+/=]*$"


class TpmReport(_Strict):
    """A node's TPM, as its initramfs reads it: TPM2B_PUBLIC of the EK and of a fresh AK, and
    the EK certificate from NV if there is one (DER), each base64."""

    ek: str = Field(pattern=B64, min_length=8, max_length=1400)
    ak: str = Field(pattern=B64, min_length=8, max_length=1400)
    ek_cert: str | None = Field(None, pattern=B64, max_length=6000)
    # Measured boot ([security] tpm_measured): TPM2_Quote by the AK over this boot's quote
    # nonce (TPMS_ATTEST, TPMT_SIGNATURE) and the quoted PCRs' values concatenated, base64.
    quote: str | None = Field(None, pattern=B64, max_length=1400)
    quote_sig: str | None = Field(None, pattern=B64, max_length=1400)
    pcrs: str | None = Field(None, pattern=B64, max_length=1400)
    eventlog: str | None = Field(None, pattern=B64, max_length=60000)  # binary_bios_measurements


class TpmTrust(_Strict):
    replace: bool = False  # trust the last refused EK instead (a replaced board or TPM)


class EventIn(_Strict):
    stage: str = Field(pattern=STAGE)
    detail: dict[str, Any] = {}


class ImageFile(BaseModel):
    name: str
    size: int
    sha256: str


class ImageOut(BaseModel):
    name: str
    source: str
    created: str
    kernel_version: str
    initramfs: str
    files: list[ImageFile]


class LeaseOut(BaseModel):
    ip: str
    mac: str
    expires: Time
    active: bool
    client_id: str | None = None
    hostname: str | None = None


class ServerOut(BaseModel):
    """One ramboot server on this database (several act as one on PostgreSQL)."""

    name: str
    address: str
    http_base: str
    images: dict[str, dict[str, str]]  # image -> {file: sha256}: only images it holds verified
    started: Time
    last_seen: Time  # its last heartbeat
    alive: bool  # heard from within `[cluster] dead_after`: named to nodes
    this: bool  # the server that answered
    group: str | None = None  # `[cluster] group`: its rack or row


class Accepted(BaseModel):
    ok: bool = True


class ErrorOut(BaseModel):
    error: str
