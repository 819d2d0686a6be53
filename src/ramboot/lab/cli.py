"""`ramboot lab up|down|vm`: an isolated network with the server on it, and blank VMs that boot from it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..api_token import token_file
from ..config import ConfigError, load_config
from ..macaddr import BadMac, normalize_mac
from .impair import Impairment
from .netns import Lab, LabError
from .server import SERVER_KEY, build_image, has_image, lab_config_text, start_server
from .vm import FIRMWARES, address_of, attach_console, boot_vm, format_timeline, kept_vms, random_mac, stop_vm


def _fail(msg: str) -> None:
    click.echo(f"ramboot: error: {msg}", err=True)
    sys.exit(1)


@click.group()
def lab() -> None:
    """A lab network (namespace ramboot-lab, bridge rb0, server 172.22.33.2, with --ipv6 also
    fd00:172:22:33::2) with blank PXE VMs."""


@lab.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="serve with this config instead of the lab's own (proxy mode, another image)")
@click.option("--ipv6", "ipv6", flag_value="dual", default=None,
              help="dual stack: DHCPv6 and router advertisements for fd00:172:22:33::/64 beside IPv4")
@click.option("--ipv6-only", "ipv6", flag_value="only",
              help="IPv6 only: no IPv4 address anywhere in the lab, DHCPv4 off")
def up(config_path: Path | None, ipv6: str | None) -> None:
    """Make the lab network, build the built-in image if needed, and start the server in it."""
    the_lab = Lab(ipv6=ipv6 or "")
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
        the_lab.remember(api_base=base, config=str(config_path), ipv6=the_lab.ipv6)
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
@click.option("--tpm", is_flag=True,
              help="give the VM a TPM 2.0 (swtpm), its state kept per MAC in the lab's folder across reboots")
@click.option("--tpm-state", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="the swtpm's state folder instead (another folder: another TPM); implies --tpm")
@click.option("--bmc", type=click.Choice(["ipmi", "redfish"]), default=None,
              help="run the VM behind an emulated BMC (ipmi: OpenIPMI's ipmi_sim; redfish: sushy-emulator in front "
                   "of the lab's own libvirtd), print its --bmc URL and leave both running until `lab down`")
@click.option("--keep", is_flag=True,
              help="leave the VM running once it has booted (to log in), until --stop or `lab down`")
@click.option("--console", "console_mac", is_flag=False, flag_value="", default=None, metavar="[MAC]",
              help="attach to a kept VM's serial console (Ctrl-] detaches); MAC may be left out if one runs")
@click.option("--stop", "stop_mac", is_flag=False, flag_value="", default=None, metavar="[MAC]",
              help="power a kept VM off (ACPI button, then QEMU ends after --timeout s at most)")
def vm(firmware: str, secure_boot: bool, mac: str | None, timeout: float, uuid: str | None, loss: float,
       delay: float, tpm: bool, tpm_state: Path | None, bmc: str | None, keep: bool, console_mac: str | None,
       stop_mac: str | None) -> None:
    """Boot a blank VM on the lab network; exit 0 only once it runs from its RAM root.

    With --keep it keeps running afterwards: `--console MAC` attaches to its serial console,
    `--stop MAC` powers it off."""
    st = Lab().state()
    the_lab = Lab(ipv6=st.get("ipv6", ""))
    if console_mac is not None or stop_mac is not None:
        _kept(the_lab, console_mac, stop_mac, timeout)
        return
    if not the_lab.exists() or SERVER_KEY not in st["pids"]:
        _fail("the lab is not up; run: ramboot lab up")
    if bmc:
        _vm_behind_bmc(the_lab, st, bmc, firmware, mac, timeout)
        return
    try:
        impair = Impairment(loss / 100, delay / 1000) if loss or delay else None
        mac = normalize_mac(mac) if mac else random_mac()
        if tpm and tpm_state is None:
            tpm_state = the_lab.root / "tpm" / mac.replace(":", "")
        result = boot_vm(the_lab, firmware, mac, timeout, echo=sys.stdout.buffer, api_base=st.get("api_base"),
                         uuid=uuid, secure_boot=secure_boot, impair=impair, keep=keep,
                         tpm=tpm_state.resolve() if tpm_state else None)
    except (LabError, BadMac) as e:
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


def _vm_behind_bmc(the_lab: Lab, st: dict[str, Any], kind: str, firmware: str, mac: str | None, timeout: float) -> None:
    import time

    from ..power import PowerError
    from .bmc import start_ipmi_vm, start_redfish_vm, wait_booted
    from .vm import choose_accel, random_mac

    mac = mac or random_mac()
    kernel = next(iter(sorted(the_lab.data_dir.glob("images/*/vmlinuz"))), None)
    accel, _why = choose_accel(the_lab, kernel)
    since = time.time()
    if kind == "redfish" and firmware != "bios":
        _fail("--bmc redfish runs a libvirt domain with SeaBIOS: use --firmware bios")
    try:
        vm = start_ipmi_vm(the_lab, mac, accel, firmware) if kind == "ipmi" else start_redfish_vm(the_lab, mac, accel)
    except (LabError, PowerError) as e:
        _fail(str(e))
    click.echo(f"mac: {mac}")
    click.echo(f"bmc: {vm.url}")
    click.echo(f"console: {vm.console_log}")
    ok, last = wait_booted(the_lab, mac, since, timeout, st.get("api_base"))
    if not ok:
        _fail(f"{mac} did not reach its RAM root within {timeout:.0f} s (last stage: {last}); "
              f"the VM and its BMC keep running until `ramboot lab down`")
    click.echo(f"{mac}: reached its RAM root in {time.time() - since:.1f} s; the VM and its BMC keep running "
               "until `ramboot lab down`")
