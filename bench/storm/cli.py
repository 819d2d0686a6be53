"""`python -m bench.storm`: the storm's command line (as root, from the repository's top).

The same command, with hidden options, is each load generator process (`--client-params`)
and the link-bound blaster (`--blast`) that the orchestrator starts in the namespaces."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

import click

from ramboot.lab.impair import Impairment

from .common import Params
from .generator import run_clients
from .linkbound import blast as run_blast


@click.command()
@click.option("-n", "--clients", "n", type=click.IntRange(1, 4000), default=100, show_default=True,
              help="PXE clients booting at once")
@click.option("--image-mb", type=float, default=8, show_default=True,
              help="root image size (kernel is 1/16, initrd 1/8 of it)")
@click.option("--blksize", type=int, default=1456, show_default=True, help="TFTP blksize the clients ask for")
@click.option("--windowsize", type=int, default=0, show_default=True,
              help="TFTP windowsize the clients ask for (0: none, like a PXE ROM)")
@click.option("--ramp", type=float, default=0.0, show_default=True, help="spread the power-ons over this many seconds")
@click.option("--workers", type=click.IntRange(1, 16), default=2, show_default=True,
              help="load generator processes (the clients are split among them)")
@click.option("--timeout", type=float, default=600, show_default=True, help="per-client HTTP timeout, seconds")
@click.option("--servers", type=click.IntRange(1, 8), default=1, show_default=True,
              help="ramboot servers on one bridge and one throwaway PostgreSQL cluster")
@click.option("--kill-after", type=float, default=None,
              help="kill -9 the first server this many seconds into the storm")
@click.option("--loss", type=click.FloatRange(0, 100), default=0.0, show_default=True,
              help="percent of frames the wire drops, each way (ramboot.lab.impair; netem's `loss`)")
@click.option("--delay", "delay_ms", type=click.FloatRange(0, 10_000), default=0.0, show_default=True,
              help="milliseconds the wire holds every frame, each way (netem's `delay`)")
@click.option("--seed", type=int, help="the wire's RNG seed (with --loss)")
@click.option("--seeding/--no-seeding", default=False, show_default=True,
              help="booted clients serve their root to later ones, as nodes do ([scale] seed)")
@click.option("--link-mbit", type=click.FloatRange(0), default=0.0, show_default=True,
              help="limit what the server sends to this rate (tc tbf on its veth; 0: no limit)")
@click.option("--serve-workers", default="1", show_default=True,
              help="the server's `[serve] workers`; a list (1,2) runs one storm per value, side by side in one"
                   " run, and prints the p99 ratio")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="write the summary here")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path),
              help="keep the server log and raw results here")
@click.option("--client-params", hidden=True, type=click.Path(dir_okay=False))
@click.option("--client-out", hidden=True, type=click.Path(dir_okay=False))
@click.option("--blast", hidden=True, type=click.Path(dir_okay=False))
def storm(
    n: int, image_mb: float, blksize: int, windowsize: int, ramp: float, workers: int, timeout: float, servers: int,
    kill_after: float | None, loss: float, delay_ms: float, seed: int | None, seeding: bool, link_mbit: float,
    serve_workers: str, json_out: Path | None, keep: Path | None, client_params: str | None,
    client_out: str | None, blast: str | None,
) -> None:
    """Simulate N PXE clients booting at once against a real `ramboot serve` in a namespace."""
    if blast:
        run_blast(blast)
        return
    if client_params:  # the load generator itself, inside the client namespace
        p: Params = json.loads(Path(client_params).read_text())
        factory: Callable[[], asyncio.AbstractEventLoop] | None = None
        try:
            import uvloop

            factory = uvloop.new_event_loop  # a cheaper loop per datagram and per recv
        except ImportError:
            pass
        with asyncio.Runner(loop_factory=factory) as runner:
            out = runner.run(run_clients(p))
        assert client_out, "--client-params goes with --client-out"
        Path(client_out).write_text(json.dumps(out))
        return
    from .orchestrator import run_storm  # not in a generator process: it loads the server's code
    from .report import compare_workers, format_summary

    if kill_after is not None and servers < 2:
        raise click.ClickException("storm: --kill-after needs --servers 2 or more (someone must be left)")
    try:
        counts = [int(x) for x in serve_workers.split(",")]
    except ValueError:
        raise click.BadParameter("a number or a list like 1,2", param_hint="--serve-workers") from None
    impair = Impairment(loss / 100, delay_ms / 1000, seed=seed) if loss or delay_ms else None
    runs = []
    for count in counts:
        s = run_storm(n, image_mb, blksize, windowsize, ramp, timeout, keep / f"workers{count}" if keep else None,
                      workers=workers, servers=servers, kill_after=kill_after, impair=impair, seed=seeding,
                      link_mbit=link_mbit, serve_workers=count)
        click.echo(f"[serve] workers = {count}\n" + format_summary(s) if len(counts) > 1 else format_summary(s))
        runs.append(s)
    if len(runs) > 1:
        click.echo(compare_workers(runs))
    if json_out:
        json_out.write_text(json.dumps(runs[0] if len(runs) == 1 else runs, indent=1))
    if any(s["failed"] or not s["server_alive"] or s["addresses_twice"] for s in runs):
        sys.exit(1)


def main() -> None:
    storm(prog_name="python -m bench.storm")
