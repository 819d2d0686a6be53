"""The `ramboot` command line: serve, node, profile, lease, overlay, ssh, image, lab, doctor, init.

Every user error ends in one line on stderr and a non-zero exit, never a
traceback.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click

from . import __version__
from .config import ConfigError, load_config
from .doctor import doctor
from .identity_cli import overlay, ssh
from .images.cli import image
from .init_cli import init
from .inventory.cli import lease, node, profile
from .lab.cli import lab
from .logs import setup_logging
from .power.cli import boot_once, console, power, reprovision


class _Ramboot(click.Group):
    """Every error the same way: one line on stderr, `ramboot: error: …`, never Click's `Error:`
    after a usage block (exit status 2 for a usage error, 1 otherwise, as Click's)."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as e:
            where = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            click.echo(f"ramboot: error: {e.format_message()}{where}", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            click.echo(f"ramboot: error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("ramboot: error: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def _version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """`--version`: the version, then whether the hot paths run compiled (ramboot/compiled.py)."""
    if not value or ctx.resilient_parsing:
        return
    from .compiled import summary

    click.echo(f"ramboot, version {__version__}\n{summary()}")
    ctx.exit()


@click.group(cls=_Ramboot, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_version,
              help="Show the version (and whether the hot paths run compiled) and exit.")
def main() -> None:
    """Boot diskless machines over the network into a root held in RAM."""


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="TOML config file")
@click.option("-v", "--verbose", is_flag=True, help="debug logging")
def serve(config_path: str, verbose: bool) -> None:
    """Run the DHCP, TFTP and HTTP servers in the foreground until SIGTERM."""
    from .server.app import loop_factory
    from .server.app import serve as run

    try:
        config = load_config(config_path)
        setup_logging(verbose, config.log.format)
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(run(config))
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot serve: {e}") from None


# Sub-command groups live beside the code they drive.
main.add_command(node)
main.add_command(power)
node.add_command(reprovision)
node.add_command(boot_once)
node.add_command(console)
main.add_command(profile)
main.add_command(lease)
main.add_command(overlay)
main.add_command(ssh)
main.add_command(image)
main.add_command(lab)
main.add_command(doctor)
main.add_command(init)
