"""`ramboot node add|list|show|rm`: against the local store (`--config`) or a server (`--server`, `--token`).

Both ways go through the same pydantic models as the REST API, so a node
looks the same from the CLI, the API and the status page.
"""

from __future__ import annotations

import builtins
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click
from pydantic import BaseModel, ValidationError
from rich import box
from rich.console import Console, OverflowMethod
from rich.markup import escape
from rich.table import Table

from ..config import ConfigError, load_config
from ..macaddr import BadMac, normalize_mac
from . import schemas as S

if TYPE_CHECKING:
    from .service import Service

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])


class Local:
    """The local store, through the same service as the API."""

    def __init__(self, config_path: str):
        from ..policy import Booter
        from .service import Service
        from .store import Store

        config = load_config(config_path)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store.for_config(config)
        # The address only shapes URLs in a decision, which nothing here shows.
        booter = Booter(config, store.directory, str(config.network.address or "127.0.0.1"))
        self.svc = Service(config, store, booter)

    def _do(self, call: Callable[[Service], T]) -> T:
        from .service import ServiceError

        try:
            return call(self.svc)
        except ServiceError as e:
            raise click.ClickException(str(e)) from None

    def add(self, mac: str, body: S.NodeIn, replace: bool) -> S.NodeDetail:
        return self._do(lambda svc: svc.add_node(mac, body, replace))[0]

    def patch(self, mac: str, patch: dict[str, Any]) -> S.NodeDetail:
        return self._do(lambda svc: svc.patch_node(mac, patch))

    def list(self) -> builtins.list[S.NodeOut]:
        return self._do(lambda svc: svc.list_nodes())

    def show(self, mac: str) -> S.NodeDetail:
        return self._do(lambda svc: svc.show_node(mac))

    def rm(self, mac: str) -> None:
        self._do(lambda svc: svc.remove_node(mac))

    def trust(self, mac: str, replace: bool) -> S.TpmOut:
        return self._do(lambda svc: svc.trust_tpm(mac, replace))

    def put_profile(self, name: str, body: S.ProfileIn) -> S.ProfileOut:
        return self._do(lambda svc: svc.put_profile(name, body))[0]

    def list_profiles(self) -> builtins.list[S.ProfileOut]:
        return self._do(lambda svc: svc.list_profiles())

    def show_profile(self, name: str) -> S.ProfileOut:
        return self._do(lambda svc: svc.show_profile(name))

    def rm_profile(self, name: str) -> None:
        self._do(lambda svc: svc.remove_profile(name))

    def list_leases(self) -> builtins.list[S.LeaseOut]:
        return self._do(lambda svc: svc.list_leases())


class Remote:
    def __init__(self, url: str, token: str | None):
        if not url.startswith(("http://", "https://")):
            raise click.ClickException(f"--server: expected http://HOST[:PORT], got {url!r}")
        self.base = url.rstrip("/") + "/api/v1"
        self.token = token

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/merge-patch+json" if method == "PATCH" else "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            try:
                msg = json.loads(e.read())["error"]
            except (ValueError, KeyError, TypeError):
                msg = e.reason
            raise click.ClickException(f"server said {e.code}: {msg}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise click.ClickException(f"cannot reach {self.base}: {reason}") from None
        return json.loads(raw) if raw else None

    def add(self, mac: str, body: S.NodeIn, replace: bool) -> S.NodeDetail:
        if replace:
            return S.NodeDetail.model_validate(self.call("PUT", f"/nodes/{mac}", body.model_dump()))
        return S.NodeDetail.model_validate(self.call("POST", "/nodes", {"mac": mac, **body.model_dump()}))

    def patch(self, mac: str, patch: dict[str, Any]) -> S.NodeDetail:
        return S.NodeDetail.model_validate(self.call("PATCH", f"/nodes/{mac}", patch))

    def list(self) -> builtins.list[S.NodeOut]:
        return [S.NodeOut.model_validate(n) for n in self.call("GET", "/nodes")]

    def show(self, mac: str) -> S.NodeDetail:
        return S.NodeDetail.model_validate(self.call("GET", f"/nodes/{mac}"))

    def rm(self, mac: str) -> None:
        self.call("DELETE", f"/nodes/{mac}")

    def trust(self, mac: str, replace: bool) -> S.TpmOut:
        return S.TpmOut.model_validate(self.call("POST", f"/nodes/{mac}/tpm/trust", {"replace": replace}))

    def put_profile(self, name: str, body: S.ProfileIn) -> S.ProfileOut:
        return S.ProfileOut.model_validate(self.call("PUT", f"/profiles/{name}", body.model_dump()))

    def list_profiles(self) -> builtins.list[S.ProfileOut]:
        return [S.ProfileOut.model_validate(p) for p in self.call("GET", "/profiles")]

    def show_profile(self, name: str) -> S.ProfileOut:
        return S.ProfileOut.model_validate(self.call("GET", f"/profiles/{name}"))

    def rm_profile(self, name: str) -> None:
        self.call("DELETE", f"/profiles/{name}")

    def list_leases(self) -> builtins.list[S.LeaseOut]:
        return [S.LeaseOut.model_validate(x) for x in self.call("GET", "/leases")]


def _open(config_path: str | None, server: str | None, token: str | None) -> Local | Remote:
    if server:
        return Remote(server, token or _local_token(config_path))
    if not config_path:
        raise click.UsageError("give --config FILE (local store) or --server URL (a running server)")
    try:
        return Local(config_path)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def _local_token(config_path: str | None) -> str | None:
    """No --token or $RAMBOOT_TOKEN: the server's admin token from the config given with --config
    (never a default one: the token goes only to a server the user named both ways), or the
    DATA/api-token `serve` made there, if this user may read it."""
    from ..api_token import client_token

    if config_path is None:
        return None
    try:
        return client_token(load_config(config_path))
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def _mac(value: str) -> str:
    try:
        return normalize_mac(value)
    except BadMac as e:
        raise click.BadParameter(str(e)) from None


def _ago(when: datetime | None) -> str:
    if when is None:
        return "—"
    t = when.timestamp()
    s = max(0, time.time() - t)
    if s < 120:
        return f"{s:.0f}s ago"
    if s < 7200:
        return f"{s / 60:.0f}m ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _json_out(data: BaseModel | list[Any]) -> None:
    """What the API would answer, the same field names, one JSON document on stdout."""
    if isinstance(data, list):
        click.echo(json.dumps([d.model_dump(mode="json") for d in data], indent=2))
    else:
        click.echo(json.dumps(data.model_dump(mode="json"), indent=2))


def _image_of(e: S.Effective) -> str:
    if e.image is None:
        return "(none: ignored)"
    return e.image if e.image_from in (None, "node") else f"{e.image} ({e.image_from})"


def _ip_of(e: S.Effective) -> str:
    if e.ip is None:
        return ""
    return e.ip + (" (lease)" if e.ip_from == "lease" else "")


def _backend_options(f: F) -> F:
    f = click.option("--token", envvar="RAMBOOT_TOKEN",
                     help="API bearer token (or $RAMBOOT_TOKEN; default with --server: the one in the "
                          "config's data directory, DATA/api-token)")(f)
    f = click.option("--server", metavar="URL", help="a running ramboot server instead of the local store")(f)
    f = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                     help="TOML config (the local store; with --server, where the API token is)")(f)
    return f


@click.group()
def node() -> None:
    """Register nodes and see their hardware and boots."""


def _read_keys(files: tuple[str, ...]) -> list[str]:
    """The public keys in each file (an authorized_keys-style file: one key per line, # comments)."""
    keys = []
    for f in files:
        try:
            text = open(f, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError) as e:
            raise click.BadParameter(f"{f}: {getattr(e, 'strerror', None) or e}", param_hint="--ssh-key") from None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if not lines:
            raise click.BadParameter(f"{f}: no public key in it", param_hint="--ssh-key")
        for ln in lines:
            try:
                keys.append(S.ssh_public_key(ln))
            except ValueError as e:
                raise click.BadParameter(f"{f}: {e}", param_hint="--ssh-key") from None
    return keys


def _validated(model: type[M], param_names: dict[str, str], **fields: Any) -> M:
    """The pydantic model, or the CLI's one-line error naming the option."""
    try:
        return model(**fields)
    except ValidationError as e:
        where, words = S.in_words(e)
        field = where.split(".")[0]
        raise click.BadParameter(words, param_hint=param_names.get(field, f"--{field.replace('_', '-')}")) from None


def _labels(labels: tuple[str, ...]) -> dict[str, str]:
    pairs = {}
    for item in labels:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--label")
        pairs[k] = v
    return pairs


CONSOLE_SHOWN = 60  # console lines `node show` prints (the API has them all)

_NAMES = {"bmc": "--bmc", "ssh_keys": "--ssh-key", "profiles": "--profile", "overlays": "--overlay",
          "labels": "--label"}


@node.command()
@click.argument("mac", callback=lambda c, p, v: _mac(v))
@click.option("--image", help="image name (DATA/images/NAME); default: its profiles', else boot.default_image")
@click.option("--hostname")
@click.option("--ip", help="fixed IPv4 address (full DHCP mode)")
@click.option("--loader", type=click.Choice(["ipxe", "pxelinux", "grub"]),
              help="grub: UEFI Secure Boot through Debian's signed shim and GRUB (BIOS falls back to iPXE)")
@click.option("--kernel-args", default="", help="extra kernel arguments")
@click.option("--uuid", help="SMBIOS UUID, to match the node by DHCP option 97")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE")
@click.option("--ssh-key", "ssh_keys", multiple=True, type=click.Path(dir_okay=False),
              help="a public key file for root's authorized_keys (repeatable)")
@click.option("--profile", "profiles", multiple=True, help="a profile to inherit, in order (repeatable)")
@click.option("--overlay", "overlays", multiple=True, help="an overlay (DATA/overlays/NAME) to lay on (repeatable)")
@click.option("--bmc", metavar="URL", help=S.BMC_HELP)
@click.option("--replace", is_flag=True, help="replace a node already registered, whole (else it is refused)")
@_backend_options
def add(mac: str, image: str | None, hostname: str | None, ip: str | None, loader: str | None, kernel_args: str,
        uuid: str | None, labels: tuple[str, ...], ssh_keys: tuple[str, ...], profiles: tuple[str, ...],
        overlays: tuple[str, ...], bmc: str | None, replace: bool,
        config_path: str | None, server: str | None, token: str | None) -> None:
    """Register a node (`--replace`: replace one registered before; `node set` changes one field)."""
    body = _validated(S.NodeIn, _NAMES, image=image, hostname=hostname, ip=ip, loader=loader,
                      kernel_args=kernel_args, uuid=uuid, labels=_labels(labels), ssh_keys=_read_keys(ssh_keys),
                      profiles=list(profiles), overlays=list(overlays), bmc=bmc)
    _said(_open(config_path, server, token).add(mac, body, replace))


def _said(n: S.NodeDetail) -> None:
    """The warnings (the same whether the store is local or the server's), then what the node boots."""
    for w in n.warnings:
        click.echo(f"warning: {w}", err=True)
    e = n.effective
    click.echo(f"node {n.mac}: image {_image_of(e)}" + (f", ip {e.ip}" if e.ip else "")
               + (f", hostname {n.hostname}" if n.hostname else "")
               + (f", profiles {', '.join(e.profiles)}" if e.profiles else "") + (f", bmc {n.bmc}" if n.bmc else ""))


# `node set --unset FIELD`: the node's fields by their option names; `label.KEY` removes one label.
_UNSET = {"image": "image", "hostname": "hostname", "ip": "ip", "loader": "loader", "uuid": "uuid",
          "kernel-args": "kernel_args", "label": "labels", "ssh-key": "ssh_keys", "profile": "profiles",
          "overlay": "overlays"}


@node.command("set")
@click.argument("mac", callback=lambda c, p, v: _mac(v))
@click.option("--image", help="image name (DATA/images/NAME)")
@click.option("--hostname")
@click.option("--ip", help="fixed IPv4 address (full DHCP mode)")
@click.option("--loader", type=click.Choice(["ipxe", "pxelinux", "grub"]))
@click.option("--kernel-args", help="extra kernel arguments")
@click.option("--uuid", help="SMBIOS UUID, to match the node by DHCP option 97")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="set one label; others stay")
@click.option("--ssh-key", "ssh_keys", multiple=True, type=click.Path(dir_okay=False),
              help="a public key file: the keys given replace the node's own")
@click.option("--profile", "profiles", multiple=True, help="the profiles given replace the node's list")
@click.option("--overlay", "overlays", multiple=True, help="the overlays given replace the node's list")
@click.option("--unset", "unset", multiple=True, metavar="FIELD",
              help="back to the default: " + ", ".join(_UNSET) + ", or label.KEY (repeatable)")
@_backend_options
def set_(mac: str, image: str | None, hostname: str | None, ip: str | None, loader: str | None,
         kernel_args: str | None, uuid: str | None, labels: tuple[str, ...], ssh_keys: tuple[str, ...],
         profiles: tuple[str, ...], overlays: tuple[str, ...], unset: tuple[str, ...],
         config_path: str | None, server: str | None, token: str | None) -> None:
    """Change only what the options name on a registered node (a JSON merge patch, as PATCH takes)."""
    given = {k: v for k, v in {
        "image": image, "hostname": hostname, "ip": ip, "loader": loader, "kernel_args": kernel_args, "uuid": uuid,
        "labels": _labels(labels) or None, "ssh_keys": _read_keys(ssh_keys) or None,
        "profiles": list(profiles) or None, "overlays": list(overlays) or None}.items() if v is not None}
    _validated(S.NodeIn, _NAMES, **given)  # each value checked here, named by its option
    patch: dict[str, Any] = dict(given)
    for field in unset:
        if field.startswith("label."):
            patch.setdefault("labels", {})[field.removeprefix("label.")] = None
        elif field in _UNSET:
            if _UNSET[field] in given:
                raise click.BadParameter(f"--{field} is both set and unset", param_hint="--unset")
            patch[_UNSET[field]] = None
        else:
            raise click.BadParameter(f"{field!r}: one of {', '.join(_UNSET)}, or label.KEY", param_hint="--unset")
    if not patch:
        raise click.UsageError("nothing to change: name a field to set or --unset")
    _said(_open(config_path, server, token).patch(mac, patch))


_FIT: OverflowMethod = "fold"  # a narrow terminal wraps a cell, never cuts it


def _console() -> Console:
    """A terminal's width; into a pipe, rows as long as they need (one line per row, for grep)."""
    return Console() if sys.stdout.isatty() else Console(width=4096)


@node.command("list")
@click.option("--json", "as_json", is_flag=True, help="the API's JSON (GET /api/v1/nodes)")
@_backend_options
def list_(as_json: bool, config_path: str | None, server: str | None, token: str | None) -> None:
    """Every machine that asked or booted, registered or not: what it boots, its address, its last stage."""
    nodes = _open(config_path, server, token).list()
    if as_json:
        _json_out(nodes)
        return
    table = Table(box=box.SIMPLE, pad_edge=False)
    for col in ("MAC", "hostname", "IP", "image", "loader", "stage", "seen"):
        # what is short never wraps; a long hostname or image folds onto more lines
        table.add_column(col, no_wrap=col not in ("hostname", "image"), overflow=_FIT)
    for n in nodes:
        stage = n.stage or "—"
        style = "green" if stage == "booted" else "red" if stage == "failed" else None
        table.add_row(
            n.mac + ("" if n.state == "registered" else f" ({n.state})"),
            n.hostname or "",
            _ip_of(n.effective),
            _image_of(n.effective),
            n.effective.loader or "",
            f"[{style}]{stage}[/]" if style else stage,
            _ago(n.effective.last_seen),
        )
    _console().print(table if nodes else "no nodes: none registered, none seen")


@node.command()
@click.argument("mac", callback=lambda c, p, v: _mac(v))
@click.option("--json", "as_json", is_flag=True, help="the API's JSON (GET /api/v1/nodes/MAC)")
@_backend_options
def show(mac: str, as_json: bool, config_path: str | None, server: str | None, token: str | None) -> None:
    """One node: what it boots, its inventory and its last boot timeline."""
    n = _open(config_path, server, token).show(mac)
    if as_json:
        _json_out(n)
        return
    con = _console()
    con.print(f"[bold]{n.mac}[/] ({n.state})")
    e = n.effective
    con.print(f"  boots: {_image_of(e)}" + (f", loader {e.loader}" if e.loader else ""))
    if e.ip:
        con.print(f"  ip: {e.ip} ({e.ip_from}" + (f", lease until {e.lease_expires:%Y-%m-%d %H:%M:%S %Z}"
                                                  if e.lease_expires else "") + ")")
    if e.kernel_args:
        con.print(f"  kernel args: {e.kernel_args}", markup=False)
    if e.profiles:
        con.print(f"  profiles applied: {', '.join(e.profiles)}")
    con.print(f"  last seen: {_ago(e.last_seen)}")
    for k in ("hostname", "image", "boot_once", "loader", "uuid", "kernel_args", "bmc"):
        v = getattr(n, k)
        if v:
            con.print(f"  {k}: {v}", markup=False)
    if e.bmc and e.bmc != n.bmc:  # a profile's, or @auto resolved from the node's report
        con.print(f"  bmc in use: {e.bmc}", markup=False)
    for k in ("profiles", "overlays"):
        if getattr(n, k):
            con.print(f"  {k}: {', '.join(getattr(n, k))}")
    if n.ssh_keys:
        con.print(f"  ssh keys: {len(n.ssh_keys)} (" + ", ".join(k.split()[-1] for k in n.ssh_keys) + ")",
                  markup=False)
    if n.labels:
        con.print("  labels: " + ", ".join(f"{k}={v}" for k, v in sorted(n.labels.items())), markup=False)
    _show_tpm(con, n)
    if n.inventory:
        r = n.inventory.report
        con.print(f"inventory ({_ago(n.inventory.at)}):")
        con.print(f"  cpu: {r.cpu.count} x {r.cpu.model}", markup=False)
        con.print(f"  memory: {r.memory_kib // 1024} MiB")
        for nic in r.nics:
            con.print(f"  nic {nic.name}: {nic.mac or '?'}" + (f" {nic.speed_mbps} Mb/s" if nic.speed_mbps else ""),
                      markup=False)
        for d in r.disks:
            con.print(f"  disk {d.name}: {d.size_bytes or 0} bytes {d.model or ''}".rstrip(), markup=False)
        dmi = " ".join(x for x in (r.dmi.vendor, r.dmi.product, r.dmi.serial) if x)
        if dmi:
            con.print(f"  dmi: {dmi}", markup=False)
        if r.bmc and (r.bmc.ip or r.bmc.mac):
            extra = ", ".join(x for x in (r.bmc.ip_source, r.bmc.netmask and f"netmask {r.bmc.netmask}",
                                          r.bmc.gateway and f"gateway {r.bmc.gateway}") if x)
            con.print(f"  bmc: {r.bmc.ip or '?'} mac {r.bmc.mac or '?'}" + (f" ({extra})" if extra else "")
                      + " (read in band)", markup=False)
    else:
        con.print("inventory: no report yet")
    b = n.last_boot
    if b is None:
        con.print("last boot: none")
        return
    extra = f", booted in {b.duration:.1f} s" if b.duration is not None else ""
    extra += f", root download {b.download_mbps:.0f} Mb/s" if b.download_mbps is not None else ""
    con.print(f"last boot: {b.stage}{extra}")
    if n.seeding:
        sd = n.seeding
        con.print(f"seeding: {sd.state}, {sd.bytes_served} bytes served in {sd.downloads} downloads"
                  + (f" (skipped: {sd.reason})" if sd.reason else ""))
    if b.contested:
        con.print("[bold red]CONTESTED[/]: a second claim was made on this boot's credential; "
                  "another machine may hold this node's secrets (docs/security.md)")
    table = Table("+s", "stage", "from", "detail")
    for ev in b.events:
        detail = " ".join(f"{k}={v}" for k, v in ev.detail.items())
        table.add_row(f"{(ev.at - b.started).total_seconds():7.2f}", ev.stage, ev.source, detail)
    con.print(table)
    if b.console:
        shown = b.console[-CONSOLE_SHOWN:]
        con.print(f"console ({len(b.console)} lines" + (f", the last {len(shown)}" if len(shown) < len(b.console)
                                                         else "") + "):")
        for c in shown:
            click.echo(f"  {(c.at - b.started).total_seconds():7.2f}  {c.line}")  # as printed, no markup


def _show_tpm(con: Console, n: S.NodeDetail) -> None:
    """The node's TPM: what guards its secrets, in one line (and a refused TPM, loudly)."""
    t = n.tpm
    if t is None:
        con.print("  tpm: none enrolled: this node's secrets are only as safe as the provisioning network")
        return
    if t.state == "pending":
        con.print(f"  tpm: pending (EK {t.ek_fingerprint}): no secret until `ramboot node trust {n.mac}`")
    else:
        con.print(f"  tpm: trusted (EK {t.ek_fingerprint}, since {_ago(t.trusted_at)}): secrets open only in it")
    if t.ek_cert:
        con.print(f"  tpm EK certificate: {t.ek_cert}")
    if t.refused_fingerprint:
        con.print(f"  [bold red]tpm REFUSED[/]: another TPM (EK {t.refused_fingerprint}) asked for this node's "
                  f"secrets {_ago(t.refused_at)} (untrusted-tpm); `node trust {n.mac} --replace` if the board changed")
    if t.signed_reports:
        con.print("  tpm reports: signed by this boot's attestation key (unsigned ones are refused)")
    if t.measured_images:
        con.print(f"  tpm measured boot: trusted PCR values for {', '.join(t.measured_images)}")
    if t.pcr_refused:
        con.print(f"  [bold red]tpm BOOT REFUSED[/] {_ago(t.pcr_refused_at)}: {escape(t.pcr_refused)}")


@node.command()
@click.argument("mac", callback=lambda c, p, v: _mac(v))
@click.option("--replace", is_flag=True, help="trust the TPM last refused instead (a replaced board or TPM)")
@_backend_options
def trust(mac: str, replace: bool, config_path: str | None, server: str | None, token: str | None) -> None:
    """Trust a node's pending TPM: from then on its secrets open only in that TPM."""
    t = _open(config_path, server, token).trust(mac, replace)
    click.echo(f"node {mac}: TPM trusted, EK {t.ek_fingerprint}")


@node.command()
@click.argument("mac", callback=lambda c, p, v: _mac(v))
@_backend_options
def rm(mac: str, config_path: str | None, server: str | None, token: str | None) -> None:
    """Forget a node (its events and inventory are kept)."""
    _open(config_path, server, token).rm(mac)
    click.echo(f"node {mac} removed")


# -- profiles -------------------------------------------------------------------------
@click.group()
def profile() -> None:
    """Named settings that nodes inherit: image, kernel arguments, SSH keys, overlays, labels."""


@profile.command("add")
@click.argument("name")
@click.option("--image", help="image name (DATA/images/NAME)")
@click.option("--kernel-args", default="", help="extra kernel arguments")
@click.option("--ssh-key", "ssh_keys", multiple=True, type=click.Path(dir_okay=False),
              help="a public key file for root's authorized_keys (repeatable)")
@click.option("--overlay", "overlays", multiple=True, help="an overlay (DATA/overlays/NAME) (repeatable)")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE")
@click.option("--bmc", metavar="URL", help="the BMC of nodes that name none of their own: " + S.BMC_HELP)
@_backend_options
def profile_add(name: str, image: str | None, kernel_args: str, ssh_keys: tuple[str, ...], overlays: tuple[str, ...],
                labels: tuple[str, ...], bmc: str | None,
                config_path: str | None, server: str | None, token: str | None) -> None:
    """Create a profile (or replace it)."""
    try:
        S.plain_name(name)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="NAME") from None
    body = _validated(S.ProfileIn, _NAMES, image=image, kernel_args=kernel_args, ssh_keys=_read_keys(ssh_keys),
                      overlays=list(overlays), labels=_labels(labels), bmc=bmc)
    p = _open(config_path, server, token).put_profile(name, body)
    for w in p.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(f"profile {p.name}" + (f": image {p.image}" if p.image else ""))


@profile.command("list")
@click.option("--json", "as_json", is_flag=True, help="the API's JSON (GET /api/v1/profiles)")
@_backend_options
def profile_list(as_json: bool, config_path: str | None, server: str | None, token: str | None) -> None:
    """All profiles."""
    profiles = _open(config_path, server, token).list_profiles()
    if as_json:
        _json_out(profiles)
        return
    table = Table(box=box.SIMPLE, pad_edge=False)
    for col in ("name", "image", "kernel args", "ssh keys", "overlays", "labels"):
        table.add_column(col, overflow=_FIT)
    for p in profiles:
        table.add_row(p.name, p.image or "", p.kernel_args, str(len(p.ssh_keys)), ", ".join(p.overlays),
                      ", ".join(f"{k}={v}" for k, v in sorted(p.labels.items())))
    _console().print(table if profiles else "no profiles")


@profile.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="the API's JSON (GET /api/v1/profiles/NAME)")
@_backend_options
def profile_show(name: str, as_json: bool, config_path: str | None, server: str | None, token: str | None) -> None:
    """One profile."""
    p = _open(config_path, server, token).show_profile(name)
    if as_json:
        _json_out(p)
        return
    click.echo(f"profile {p.name}")
    for k in ("image", "kernel_args", "bmc"):
        if getattr(p, k):
            click.echo(f"  {k}: {getattr(p, k)}")
    if p.overlays:
        click.echo(f"  overlays: {', '.join(p.overlays)}")
    for key in p.ssh_keys:
        click.echo(f"  ssh key: {key.split()[0]} {key.split()[-1]}")
    if p.labels:
        click.echo("  labels: " + ", ".join(f"{k}={v}" for k, v in sorted(p.labels.items())))


@profile.command("rm")
@click.argument("name")
@_backend_options
def profile_rm(name: str, config_path: str | None, server: str | None, token: str | None) -> None:
    """Remove a profile (nodes that name it keep their own settings)."""
    _open(config_path, server, token).rm_profile(name)
    click.echo(f"profile {name} removed")


# -- leases ---------------------------------------------------------------------------
@click.group()
def lease() -> None:
    """The DHCP leases this server (or its cluster) handed out."""


@lease.command("list")
@click.option("--json", "as_json", is_flag=True, help="the API's JSON (GET /api/v1/leases)")
@_backend_options
def lease_list(as_json: bool, config_path: str | None, server: str | None, token: str | None) -> None:
    """Every lease, by address, with its MAC and when it ends."""
    leases = _open(config_path, server, token).list_leases()
    if as_json:
        _json_out(leases)
        return
    table = Table(box=box.SIMPLE, pad_edge=False)
    for col in ("IP", "MAC", "hostname", "client id", "expires"):
        table.add_column(col, no_wrap=col != "client id", overflow=_FIT)
    for x in leases:
        ends = x.expires.astimezone().strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(x.ip, x.mac, x.hostname or "", x.client_id or "", ends if x.active else f"{ends} (expired)")
    _console().print(table if leases else "no leases")

