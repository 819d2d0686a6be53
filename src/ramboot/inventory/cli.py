"""`ramboot node add|list|show|rm`: against the local store (`--config`) or a server (`--server`, `--token`).

Both ways go through the same pydantic models as the REST API, so a node
looks the same from the CLI, the API and the status page.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import click
from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.table import Table

from ..config import GRUB_PROXY_REFUSED, ConfigError, load_config
from ..macaddr import BadMac, normalize_mac
from . import schemas as S


class Local:
    def __init__(self, config_path: str):
        from .store import Store

        self.config = load_config(config_path)
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store.for_config(self.config)

    def put(self, mac: str, body: S.NodeIn) -> S.NodeDetail:
        from .store import NodeSpec, StoreError
        from .views import node_detail, node_warnings

        if body.loader == "grub" and self.config.dhcp.mode == "proxy":
            raise click.ClickException(GRUB_PROXY_REFUSED)
        try:
            self.store.put_node(NodeSpec(mac=mac, **body.model_dump()))
        except StoreError as e:
            raise click.ClickException(str(e)) from None
        detail = node_detail(self.store, mac)
        assert detail is not None
        detail.warnings = node_warnings(self.config.data_dir, self.config.boot.loader, body.image, body.loader)
        return detail

    def list(self) -> list[S.NodeOut]:
        from .views import node_list

        return node_list(self.store)

    def show(self, mac: str) -> S.NodeDetail:
        from .views import node_detail

        detail = node_detail(self.store, mac)
        if detail is None:
            raise click.ClickException(f"no node {mac}")
        return detail

    def rm(self, mac: str) -> None:
        if not self.store.remove_node(mac):
            raise click.ClickException(f"no node {mac}")

    def trust(self, mac: str, replace: bool) -> S.TpmOut:
        rec = self.store.tpms.trust(mac, time.time(), replace)
        if rec is None:
            raise click.ClickException(f"{mac} has no {'refused ' if replace else ''}TPM to trust")
        return S.TpmOut.model_validate(rec, from_attributes=True)

    def put_profile(self, name: str, body: S.ProfileIn) -> S.ProfileOut:
        from .store import ProfileSpec, StoreError

        try:
            self.store.put_profile(ProfileSpec(name=name, **body.model_dump()))
        except StoreError as e:
            raise click.ClickException(str(e)) from None
        return self.show_profile(name)

    def list_profiles(self) -> list[S.ProfileOut]:
        from dataclasses import asdict

        return [S.ProfileOut(**asdict(p)) for p in self.store.list_profiles()]

    def show_profile(self, name: str) -> S.ProfileOut:
        from dataclasses import asdict

        p = self.store.get_profile(name)
        if p is None:
            raise click.ClickException(f"no profile {name}")
        return S.ProfileOut(**asdict(p))

    def rm_profile(self, name: str) -> None:
        if not self.store.remove_profile(name):
            raise click.ClickException(f"no profile {name}")


class Remote:
    def __init__(self, url: str, token: str | None):
        if not url.startswith(("http://", "https://")):
            raise click.ClickException(f"--server: expected http://HOST[:PORT], got {url!r}")
        self.base = url.rstrip("/") + "/api/v1"
        self.token = token

    def call(self, method: str, path: str, body: dict | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
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

    def put(self, mac: str, body: S.NodeIn) -> S.NodeDetail:
        return S.NodeDetail.model_validate(self.call("PUT", f"/nodes/{mac}", body.model_dump()))

    def list(self) -> list[S.NodeOut]:
        return [S.NodeOut.model_validate(n) for n in self.call("GET", "/nodes")]

    def show(self, mac: str) -> S.NodeDetail:
        return S.NodeDetail.model_validate(self.call("GET", f"/nodes/{mac}"))

    def rm(self, mac: str) -> None:
        self.call("DELETE", f"/nodes/{mac}")

    def trust(self, mac: str, replace: bool) -> S.TpmOut:
        return S.TpmOut.model_validate(self.call("POST", f"/nodes/{mac}/tpm/trust", {"replace": replace}))

    def put_profile(self, name: str, body: S.ProfileIn) -> S.ProfileOut:
        return S.ProfileOut.model_validate(self.call("PUT", f"/profiles/{name}", body.model_dump()))

    def list_profiles(self) -> list[S.ProfileOut]:
        return [S.ProfileOut.model_validate(p) for p in self.call("GET", "/profiles")]

    def show_profile(self, name: str) -> S.ProfileOut:
        return S.ProfileOut.model_validate(self.call("GET", f"/profiles/{name}"))

    def rm_profile(self, name: str) -> None:
        self.call("DELETE", f"/profiles/{name}")


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


def _ago(t: float | None) -> str:
    if t is None:
        return "—"
    s = max(0, time.time() - t)
    if s < 120:
        return f"{s:.0f}s ago"
    if s < 7200:
        return f"{s / 60:.0f}m ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _backend_options(f):
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


def _validated(model, param_names: dict[str, str], **fields):
    """The pydantic model, or the CLI's one-line error naming the option."""
    try:
        return model(**fields)
    except ValidationError as e:
        first = e.errors()[0]
        field = str(first["loc"][0])
        raise click.BadParameter(first["msg"].removeprefix("Value error, "),
                                 param_hint=param_names.get(field, f"--{field.replace('_', '-')}")) from None


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
@_backend_options
def add(mac, image, hostname, ip, loader, kernel_args, uuid, labels, ssh_keys, profiles, overlays, bmc, config_path,
        server, token) -> None:
    """Register a node (or replace what is registered for it)."""
    body = _validated(S.NodeIn, _NAMES, image=image, hostname=hostname, ip=ip, loader=loader,
                      kernel_args=kernel_args, uuid=uuid, labels=_labels(labels), ssh_keys=_read_keys(ssh_keys),
                      profiles=list(profiles), overlays=list(overlays), bmc=bmc)
    n = _open(config_path, server, token).put(mac, body)
    for w in n.warnings:  # the same whether the store is local or the server's (--server)
        click.echo(f"warning: {w}", err=True)
    click.echo(f"node {n.mac}: image {n.image}" + (f", ip {n.ip}" if n.ip else "")
               + (f", hostname {n.hostname}" if n.hostname else "") + (f", bmc {n.bmc}" if n.bmc else ""))


@node.command("list")
@_backend_options
def list_(config_path, server, token) -> None:
    """Every machine that asked or booted, registered or not, with its last boot stage."""
    nodes = _open(config_path, server, token).list()
    table = Table(box=box.SIMPLE)
    for col in ("MAC", "hostname", "IP", "image", "loader", "stage", "seen"):
        table.add_column(col, no_wrap=col != "hostname")
    for n in nodes:
        stage = n.stage or "—"
        style = "green" if stage == "booted" else "red" if stage == "failed" else None
        table.add_row(
            n.mac + ("" if n.state == "registered" else f" ({n.state})"),
            n.hostname or "",
            n.ip or "",
            n.image or "(default)",
            n.loader or "(default)",
            f"[{style}]{stage}[/]" if style else stage,
            _ago(n.updated),
        )
    Console().print(table if nodes else "no nodes: none registered, none seen")


@node.command()
@click.argument("mac", callback=lambda c, p, v: _mac(v))
@_backend_options
def show(mac, config_path, server, token) -> None:
    """One node: what it boots, its inventory and its last boot timeline."""
    n = _open(config_path, server, token).show(mac)
    con = Console()
    con.print(f"[bold]{n.mac}[/] ({n.state})")
    for k in ("hostname", "ip", "image", "boot_once", "loader", "uuid", "kernel_args", "bmc"):
        v = getattr(n, k)
        if v:
            con.print(f"  {k}: {v}")
    for k in ("profiles", "overlays"):
        if getattr(n, k):
            con.print(f"  {k}: {', '.join(getattr(n, k))}")
    if n.ssh_keys:
        con.print(f"  ssh keys: {len(n.ssh_keys)} (" + ", ".join(k.split()[-1] for k in n.ssh_keys) + ")")
    if n.labels:
        con.print("  labels: " + ", ".join(f"{k}={v}" for k, v in sorted(n.labels.items())))
    _show_tpm(con, n)
    if n.inventory:
        r = n.inventory.report
        con.print(f"inventory ({_ago(n.inventory.at)}):")
        con.print(f"  cpu: {r.cpu.count} x {r.cpu.model}")
        con.print(f"  memory: {r.memory_kib // 1024} MiB")
        for nic in r.nics:
            con.print(f"  nic {nic.name}: {nic.mac or '?'}" + (f" {nic.speed_mbps} Mb/s" if nic.speed_mbps else ""))
        for d in r.disks:
            con.print(f"  disk {d.name}: {d.size_bytes or 0} bytes {d.model or ''}".rstrip())
        dmi = " ".join(x for x in (r.dmi.vendor, r.dmi.product, r.dmi.serial) if x)
        if dmi:
            con.print(f"  dmi: {dmi}")
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
    for e in b.events:
        detail = " ".join(f"{k}={v}" for k, v in e.detail.items())
        table.add_row(f"{e.at - b.started:7.2f}", e.stage, e.source, detail)
    con.print(table)
    if b.console:
        shown = b.console[-CONSOLE_SHOWN:]
        con.print(f"console ({len(b.console)} lines" + (f", the last {len(shown)}" if len(shown) < len(b.console)
                                                         else "") + "):")
        for c in shown:
            click.echo(f"  {c.at - b.started:7.2f}  {c.line}")  # as printed, no markup


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


@node.command()
@click.argument("mac", callback=lambda c, p, v: _mac(v))
@click.option("--replace", is_flag=True, help="trust the TPM last refused instead (a replaced board or TPM)")
@_backend_options
def trust(mac, replace, config_path, server, token) -> None:
    """Trust a node's pending TPM: from then on its secrets open only in that TPM."""
    t = _open(config_path, server, token).trust(mac, replace)
    click.echo(f"node {mac}: TPM trusted, EK {t.ek_fingerprint}")


@node.command()
@click.argument("mac", callback=lambda c, p, v: _mac(v))
@_backend_options
def rm(mac, config_path, server, token) -> None:
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
def profile_add(name, image, kernel_args, ssh_keys, overlays, labels, bmc, config_path, server, token) -> None:
    """Create a profile (or replace it)."""
    try:
        S.plain_name(name)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="NAME") from None
    body = _validated(S.ProfileIn, _NAMES, image=image, kernel_args=kernel_args, ssh_keys=_read_keys(ssh_keys),
                      overlays=list(overlays), labels=_labels(labels), bmc=bmc)
    p = _open(config_path, server, token).put_profile(name, body)
    click.echo(f"profile {p.name}" + (f": image {p.image}" if p.image else ""))


@profile.command("list")
@_backend_options
def profile_list(config_path, server, token) -> None:
    """All profiles."""
    profiles = _open(config_path, server, token).list_profiles()
    table = Table(box=box.SIMPLE)
    for col in ("name", "image", "kernel args", "ssh keys", "overlays", "labels"):
        table.add_column(col)
    for p in profiles:
        table.add_row(p.name, p.image or "", p.kernel_args, str(len(p.ssh_keys)), ", ".join(p.overlays),
                      ", ".join(f"{k}={v}" for k, v in sorted(p.labels.items())))
    Console().print(table if profiles else "no profiles")


@profile.command("show")
@click.argument("name")
@_backend_options
def profile_show(name, config_path, server, token) -> None:
    """One profile."""
    p = _open(config_path, server, token).show_profile(name)
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
def profile_rm(name, config_path, server, token) -> None:
    """Remove a profile (nodes that name it keep their own settings)."""
    _open(config_path, server, token).rm_profile(name)
    click.echo(f"profile {name} removed")
