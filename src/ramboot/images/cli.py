"""`ramboot image …`: build, list, show, rm, verify.

Every failure is one line on stderr and exit status 1: never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from .build import build_image, list_images, remove_image, verify_image
from .errors import ImageError
from .manifest import MANIFEST, ROOTFS, Manifest, ManifestError, images_dir, load_manifest
from .rootfs import Limits


def _data_dir(data_dir: Path | None, config: Path | None) -> Path:
    if data_dir is not None:
        return data_dir
    if config is not None:
        from ..config import ConfigError, load_config

        try:
            return Path(load_config(config).data_dir)
        except ConfigError as e:
            _die(str(e))
    _die("give --data-dir DIR (or --config FILE)")
    raise AssertionError  # unreachable: _die exits


def _die(msg: str) -> None:
    click.echo(f"ramboot: error: {msg}", err=True)
    sys.exit(1)


_dd = click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), help="the server's data directory")
_cf = click.option("--config", type=click.Path(path_type=Path, dir_okay=False), help="take data_dir from this config")


@click.group()
def image() -> None:
    """Build and manage boot images (kernel, initramfs, root filesystem)."""


@image.command()
@click.argument("name")
@click.option("--rootfs", default=None, metavar="SRC",
              help="DIR, FILE.tar[.gz], oci:PATH, docker-archive:PATH, debian:SUITE[:pkg,...], "
                   "squashfs:PATH (used as it is) or iso:PATH (a live ISO's root squashfs); "
                   "default: the built-in busybox root")
@click.option("--kernel", default=None, metavar="SRC",
              help="a bzImage path, an unpacked kernel tree, a version in /boot, "
                   "debian (the cloud kernel, the default), debian:generic, "
                   "or image (the root's own /boot/vmlinuz-* and /lib/modules)")
@click.option("--initramfs", type=click.Choice(["ramboot", "dracut"]), default="ramboot", show_default=True)
@click.option("--max-root-size", default="64G", show_default=True, metavar="SIZE",
              help="the most a tar, docker-archive: or oci: root's layers may write (bytes, or with K, M, G, T); "
                   "a sparse or compressed member counts at its real size")
@click.option("--max-root-entries", type=click.IntRange(min=1), default=Limits.max_entries, show_default=True,
              metavar="N", help="the most files, directories and links those layers may make")
@click.option("--allow-devices", is_flag=True, help="keep device nodes and FIFOs from those layers (refused otherwise)")
@click.option("--autologin", is_flag=True,
              help="Debian roots: log root in on every console, no password (default: consoles ask for a login)")
@_dd
@_cf
def build(name: str, rootfs: str | None, kernel: str | None, initramfs: str, max_root_size: str,
          max_root_entries: int, allow_devices: bool, autologin: bool, data_dir: Path | None,
          config: Path | None) -> None:
    """Build image NAME into DATA_DIR/images/NAME."""
    dd = _data_dir(data_dir, config)
    console = Console(stderr=True)
    try:
        limits = Limits(_size(max_root_size), max_root_entries, allow_devices)
        m = build_image(dd, name, rootfs=rootfs, kernel=kernel, initramfs=initramfs, console=console, limits=limits,
                        autologin=autologin)
    except (ImageError, ManifestError) as e:
        _die(str(e))
    except KeyboardInterrupt:
        _die("interrupted; nothing was installed")
    root = m.files[ROOTFS]
    click.echo(f"built {name} in {m.build_seconds:.1f} s: kernel {m.kernel_version}, "
               f"rootfs {root.size} bytes sha256 {root.sha256}")
    if m.kernel_signed is False:
        click.echo(f"note: the kernel of {name} carries no signature Debian's shim accepts: "
                   "nodes with --loader grub will not boot it under Secure Boot", err=True)
    click.echo(str(images_dir(dd) / name))


def _size(text: str) -> int:
    """`--max-root-size`: bytes, or a number with K, M, G or T (powers of 1024)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1 << (10 * (" KMGT".index(t[-1]))) if t and t[-1] in "KMGT" else 1
    num = t[:-1] if mult > 1 else t
    if not num.isdigit():
        raise ImageError(f"--max-root-size {text}: expected bytes or a number with K, M, G or T")
    return int(num) * mult


@image.command()
@click.argument("name")
@click.option("--from", "source", required=True, metavar="URL", help="the other server, https://HOST[:PORT]")
@click.option("--ca", type=click.Path(path_type=Path, dir_okay=False), default=None, metavar="FILE",
              help="PEM CA the source's certificate must chain to (default: DATA/tls/ca.pem, else the system's)")
@click.option("--insecure-http", is_flag=True,
              help="allow an http:// source: the sha256 then catches corruption, not a forged manifest")
@_dd
@_cf
def pull(name: str, source: str, ca: Path | None, insecure_http: bool, data_dir: Path | None,
         config: Path | None) -> None:
    """Copy image NAME from another ramboot server, checking every file's sha256."""
    from .pull import pull_image

    dd = _data_dir(data_dir, config)
    try:
        m, fetched, reused = pull_image(dd, name, source, progress=lambda msg: click.echo(f"  {msg}", err=True),
                                        ca=ca, insecure_http=insecure_http)
    except (ImageError, ManifestError, OSError) as e:
        _die(str(e))
    click.echo(f"pulled {name} from {source}: {len(m.files)} files verified, {fetched} bytes fetched, "
               f"{reused} bytes already here")


_json = click.option("--json", "as_json", is_flag=True, help="the API's JSON (GET /api/v1/images[/NAME])")


def _print_json(images: Manifest | list[Manifest]) -> None:
    """The API's shape (ImageOut), the same field names."""
    import json

    from ..inventory.views import image_out

    if isinstance(images, list):
        click.echo(json.dumps([image_out(m).model_dump(mode="json") for m in images], indent=2))
    else:
        click.echo(json.dumps(image_out(images).model_dump(mode="json"), indent=2))


@image.command("list")
@_json
@_dd
@_cf
def list_(as_json: bool, data_dir: Path | None, config: Path | None) -> None:
    """List the images with their kernel and root image sum."""
    try:
        images = list_images(_data_dir(data_dir, config))
    except ManifestError as e:
        _die(str(e))
    if as_json:
        _print_json(images)
        return
    for m in images:
        root = m.files.get(ROOTFS)
        size = f"{root.size / 1048576:.1f} MiB" if root else "-"
        click.echo(f"{m.name}\t{m.created}\t{m.kernel_version}\t{m.initramfs}\t{size}\t{m.source}")


@image.command()
@click.argument("name")
@_json
@_dd
@_cf
def show(name: str, as_json: bool, data_dir: Path | None, config: Path | None) -> None:
    """Print an image's manifest."""
    dd = _data_dir(data_dir, config)
    try:
        m = load_manifest(dd, name)
        if as_json:
            _print_json(m)
            return
        click.echo((images_dir(dd) / name / MANIFEST).read_text(), nl=False)
    except ManifestError as e:
        _die(str(e))


@image.command()
@click.argument("name")
@_dd
@_cf
def rm(name: str, data_dir: Path | None, config: Path | None) -> None:
    """Delete an image."""
    try:
        remove_image(_data_dir(data_dir, config), name)
    except (ImageError, OSError) as e:
        _die(str(e))
    click.echo(f"removed {name}")


@image.command()
@click.argument("name")
@_dd
@_cf
def verify(name: str, data_dir: Path | None, config: Path | None) -> None:
    """Re-hash an image's files against its manifest; exit 1 on any drift."""
    try:
        problems = verify_image(_data_dir(data_dir, config), name)
    except (ImageError, ManifestError) as e:
        _die(str(e))
    for fname, why in problems:
        click.echo(f"DRIFT {name}/{fname}: {why}")
    if problems:
        sys.exit(1)
    click.echo(f"{name}: ok")
