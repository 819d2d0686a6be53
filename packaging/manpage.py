"""Write ramboot(1) in roff from click's own help, so the man page cannot drift from the CLI.

Usage: python manpage.py VERSION DATE > ramboot.1
"""

from __future__ import annotations

import sys

import click

from ramboot.cli import main


def esc(text: str) -> str:
    """Escape what roff reads as commands: a leading dot or quote, and backslashes."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line if line[:1] in ".'" else line) for line in text.splitlines())


def options(cmd: click.Command, ctx: click.Context) -> list[str]:
    out = []
    for p in cmd.get_params(ctx):
        rec = p.get_help_record(ctx)
        if rec:
            out += [".TP", f"\\fB{esc(rec[0])}\\fR", esc(rec[1])]
    return out


def commands(group: click.Group, ctx: click.Context, path: str) -> list[str]:
    out = []
    for name in sorted(group.list_commands(ctx)):
        cmd = group.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            continue
        sub = click.Context(cmd, info_name=name, parent=ctx)
        full = f"{path} {name}"
        if isinstance(cmd, click.Group):
            out += commands(cmd, sub, full)
            continue
        out += [".SS", f"\\fB{esc(full)}\\fR {esc(' '.join(cmd.collect_usage_pieces(sub)))}",
                esc((cmd.help or "").split("\b")[0].strip())]
        opts = options(cmd, sub)
        if opts:
            out += [".RS", *opts, ".RE"]
    return out


def manpage(version: str, date: str) -> str:
    ctx = click.Context(main, info_name="ramboot")
    lines = [f'.TH RAMBOOT 1 "{date}" "ramboot {version}" "User Commands"',
             ".SH NAME", "ramboot \\- " + esc((main.help or "").strip().rstrip(".")),
             ".SH SYNOPSIS", "\\fBramboot\\fR [\\fB\\-\\-version\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
             ".SH DESCRIPTION",
             "ramboot answers DHCP (or proxyDHCP), TFTP and HTTP for diskless PXE boots, and builds the RAM "
             "roots the nodes boot. Start with \\fBramboot init \\-\\-interface\\fR \\fIIF\\fR, then "
             "\\fBsystemctl enable \\-\\-now ramboot\\fR.",
             ".SH COMMANDS", *commands(main, ctx, "ramboot"),
             ".SH FILES", ".TP", "/etc/ramboot/ramboot.toml", "the server's config (a conffile)",
             ".TP", "/var/lib/ramboot", "images, loaders, leases and the node database",
             ".SH SEE ALSO", "/usr/share/doc/ramboot/install.md, \\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1)"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(manpage(sys.argv[1], sys.argv[2]))
