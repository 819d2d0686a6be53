"""`ramboot lab up|down|vm`: an isolated network with the server on it, and blank VMs that boot from it."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..api_token import token_file
from ..config import ConfigError, load_config
from .impair import Impairment
from .netns import Lab, LabError
from .server import SERVER_KEY, build_image, has_image, lab_config_text, start_server
from .vm import FIRMWARES, address_of, attach_console, boot_vm, format_timeline, kept_vms, stop_vm


def _fail(msg: str) -> None:
    click.echo(f"ramboot: error: {msg}", err=True)
    sys.exit(1)


@click.group()
def lab() -> None:
    """A lab network (namespace ramboot-lab, bridge rb0, server 172.22.33.2) with blank PXE VMs."""


@lab.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="serve with this config instead of the lab's own (proxy mode, another image)")
def up(config_path: Path | None) -> None:
    """Make the lab network, build the built-in image if needed, and start the server in it."""
    the_lab = Lab()
    try:
        the_lab.create()
        if config_path is None:
            config_path = the_lab.config_file
            config_path.parent.mkdir(parents=True, exist_ok=True)
            config_path.write_text(lab_config_text(the_lab, the_lab.data_dir))
        config_path = config_path.resolve()
        config = load_config(config_path)
        image = config.boot.default_image
        if not has_image(config.data_dir, image):
            click.echo(f"ramboot lab: building the built-in image {image!r} into {config.data_dir}")
            build_image(config.data_dir, image)
        base = start_server(the_lab, config_path, the_lab.log_file)
        the_lab.remember(api_base=base, config=str(config_path))
    except (LabError, ConfigError) as e:
        _fail(str(e))
    token = "" if config.api.token else f"  token:  {token_file(config)} (for the API and the status page)\n"
    click.echo(
        f"ramboot lab: up. namespace {the_lab.ns}, bridge {the_lab.bridge}, server {base}\n"
        f"  config: {config_path}\n  data:   {config.data_dir}\n  log:    {the_lab.log_file}\n{token}"
        f"  boot a VM: ramboot lab vm --firmware bios   (or uefi, uefi-http; --secure-boot)\n"
        f"  stop:      ramboot lab down"
    )


@lab.command()
def down() -> None:
    """Stop the lab's server and VMs and remove its network; only what `lab up` made."""
    the_lab = Lab()
    try:
        removed = the_lab.teardown()
    except LabError as e:
        _fail(str(e))
    click.echo("ramboot lab: removed " + ", ".join(removed) if removed else "ramboot lab: nothing to remove")


@lab.command()
@click.option("--firmware", type=click.Choice(FIRMWARES), default="bios", show_default=True,
              help="bios: SeaBIOS + QEMU's iPXE ROM; uefi: OVMF with its own PXE; uefi-http: OVMF's UEFI HTTP boot")
@click.option("--secure-boot", is_flag=True,
              help="OVMF with Microsoft's keys enrolled and Secure Boot on (boots a node set to --loader grub)")
@click.option("--mac", default=None, help="the VM's MAC (default: random 52:54:00:xx:xx:xx)")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="seconds to wait for the RAM root")
@click.option("--uuid", default=None, help="the VM's SMBIOS UUID (what DHCP option 97 and dmidecode show)")
@click.option("--loss", type=click.FloatRange(0, 100), default=0.0,
              help="percent of the VM's frames dropped, each way (like netem's loss; ramboot.lab.impair)")
@click.option("--delay", type=click.FloatRange(0, 10_000), default=0.0,
              help="milliseconds each of the VM's frames is held, each way (like netem's delay)")
@click.option("--keep", is_flag=True,
              help="leave the VM running once it has booted (to log in), until --stop or `lab down`")
@click.option("--console", "console_mac", is_flag=False, flag_value="", default=None, metavar="[MAC]",
              help="attach to a kept VM's serial console (Ctrl-] detaches); MAC may be left out if one runs")
@click.option("--stop", "stop_mac", is_flag=False, flag_value="", default=None, metavar="[MAC]",
              help="power a kept VM off (ACPI button, then QEMU ends after --timeout s at most)")
def vm(firmware: str, secure_boot: bool, mac: str | None, timeout: float, uuid: str | None, loss: float,
       delay: float, keep: bool, console_mac: str | None, stop_mac: str | None) -> None:
    """Boot a blank VM on the lab network; exit 0 only once it runs from its RAM root.

    With --keep it keeps running afterwards: `--console MAC` attaches to its serial console,
    `--stop MAC` powers it off."""
    the_lab = Lab()
    if console_mac is not None or stop_mac is not None:
        _kept(the_lab, console_mac, stop_mac, timeout)
        return
    st = the_lab.state()
    if not the_lab.exists() or SERVER_KEY not in st["pids"]:
        _fail("the lab is not up; run: ramboot lab up")
    try:
        impair = Impairment(loss / 100, delay / 1000) if loss or delay else None
        result = boot_vm(the_lab, firmware, mac, timeout, echo=sys.stdout.buffer, api_base=st.get("api_base"),
                         uuid=uuid, secure_boot=secure_boot, impair=impair, keep=keep)
    except LabError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted; the VM was stopped")
    click.echo("\n" + format_timeline(result))
    if not result.ok:
        _fail(f"{result.mac} did not reach its RAM root: {result.reason}; the boot stopped after {result.stopped_at}")
    if keep:
        ip = address_of(result)
        click.echo(f"\nramboot lab: {result.mac} keeps running" + (f" at {ip}" if ip else "") + "\n"
                   + (f"  ssh:     ip netns exec {the_lab.ns} ssh root@{ip}\n" if ip else "")
                   + f"  console: ramboot lab vm --console {result.mac}   (Ctrl-] detaches)\n"
                   f"  stop:    ramboot lab vm --stop {result.mac}   (or: ramboot lab down)")


def _kept(the_lab: Lab, console_mac: str | None, stop_mac: str | None, timeout: float) -> None:
    """`--console` or `--stop` on a VM booted with --keep (the only one running when no MAC is given)."""
    given = console_mac if console_mac is not None else stop_mac
    try:
        if not given:
            running = kept_vms(the_lab)
            if len(running) != 1:
                _fail(f"name the VM: {len(running)} are running ({', '.join(running) or 'none'})")
            given = running[0]
        if console_mac is not None:
            click.echo(f"ramboot lab: {given}'s serial console; Ctrl-] detaches (the VM keeps running)", err=True)
            attach_console(the_lab, given, sys.stdin.buffer, sys.stdout.buffer)
            click.echo("\r\nramboot lab: detached", err=True)
        else:
            clean = stop_vm(the_lab, given, grace=min(timeout, 120.0))
            click.echo(f"ramboot lab: {given} " + ("powered off" if clean else "did not power off in time; ended"))
    except LabError as e:
        _fail(str(e))
