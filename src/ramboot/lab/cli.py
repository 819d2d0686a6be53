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
from .vm import FIRMWARES, boot_vm, format_timeline


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
def vm(firmware: str, secure_boot: bool, mac: str | None, timeout: float, uuid: str | None, loss: float,
       delay: float) -> None:
    """Boot a blank VM on the lab network; exit 0 only once it runs from its RAM root."""
    the_lab = Lab()
    st = the_lab.state()
    if not the_lab.exists() or SERVER_KEY not in st["pids"]:
        _fail("the lab is not up; run: ramboot lab up")
    try:
        impair = Impairment(loss / 100, delay / 1000) if loss or delay else None
        result = boot_vm(the_lab, firmware, mac, timeout, echo=sys.stdout.buffer, api_base=st.get("api_base"),
                         uuid=uuid, secure_boot=secure_boot, impair=impair)
    except LabError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted; the VM was stopped")
    click.echo("\n" + format_timeline(result))
    if not result.ok:
        _fail(f"{result.mac} did not reach its RAM root: {result.reason}; the boot stopped after {result.stopped_at}")
