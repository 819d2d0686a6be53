"""Per-node identity and overlays: profiles layered, templates rendered per node, host keys kept
and certified, the archive reproducible and served only to its node."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import write_fake_image
from directory_fakes import FakeDirectory
from httpserver import LiveServer
from ramboot.cli import main
from ramboot.config import parse_config
from ramboot.inventory.records import NodeSpec, ProfileSpec
from ramboot.inventory.store import LeaseRecord, Store
from ramboot.overlays import OverlayError, OverlayRenderer, archive
from ramboot.policy import Booter
from ramboot.proto.dhcp_core import lease_key
from ramboot.proto.pxe import Client

MAC = "52:54:00:0a:0b:0c"
OTHER = "52:54:00:0a:0b:0d"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMeKh7JtyJb9Q0FvXx8sQZ0aT1o3i1rSg6o5vI9wq2Xn alice@example"
KEY2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBw1nFq0Jc9Bf7Yx6q3H1pmo0c0rE0aY9v3a1b2c3d4e bob@example"


# -- profiles, layered ---------------------------------------------------------------
@pytest.mark.parametrize(
    "boot_profile, node, want",
    [
        (None, NodeSpec(MAC, profiles=["base"]), ("from-base", "console=ttyS0 quiet", (KEY,), ("motd",), "a1")),
        (None, NodeSpec(MAC, image="own", profiles=["base", "gpu"], kernel_args="x=1", ssh_keys=[KEY]),
         ("own", "console=ttyS0 quiet nouveau.modeset=0 x=1", (KEY, KEY2), ("motd", "gpu"), "b2")),
        ("base", NodeSpec(MAC), ("from-base", "console=ttyS0 quiet", (KEY,), ("motd",), "a1")),
        ("base", None, ("from-base", "console=ttyS0 quiet", (KEY,), ("motd",), "a1")),  # unknown machines too
        (None, NodeSpec(MAC, profiles=["missing"]), ("demo", "", (), (), None)),
    ],
    ids=["one", "two-and-own", "boot-profile", "unknown", "missing-profile"],
)
def test_profiles_layer_and_the_node_wins(data_dir, boot_profile, node, want):
    profiles = (ProfileSpec("base", image="from-base", kernel_args="console=ttyS0 quiet", ssh_keys=[KEY],
                            overlays=["motd"], labels={"rack": "a1"}),
                ProfileSpec("gpu", kernel_args="nouveau.modeset=0", ssh_keys=[KEY2, KEY], overlays=["gpu"],
                            labels={"rack": "b2"}))
    extra = f'[boot]\nprofile = "{boot_profile}"\n' if boot_profile else ""
    cfg = parse_config(f'data_dir = "{data_dir}"\n{extra}')
    directory = FakeDirectory(*([node] if node else []), profiles=profiles)
    d = Booter(cfg, directory, "172.22.33.2").decide(Client(MAC, ipxe=True))
    image, args, keys, overlays, rack = want
    assert (d.image, d.ssh_keys, d.overlays, dict(d.labels).get("rack")) == (image, keys, overlays, rack)
    assert d.cmdline.endswith(args) if args else "quiet" not in d.cmdline
    assert f"ramboot.overlay=https://172.22.33.2/overlay/{MAC.replace(':', '-')}.tar" in d.cmdline


# -- rendering -----------------------------------------------------------------------
@pytest.fixture
def rig(data_dir: Path):
    write_fake_image(data_dir, "demo")
    cfg = parse_config(f'data_dir = "{data_dir}"\n[dhcp]\nmode = "full"\nrange = "172.22.33.100-172.22.33.200"\n')
    store = Store.for_config(cfg)
    booter = Booter(cfg, store.directory, "172.22.33.2")
    yield data_dir, store, booter, OverlayRenderer(data_dir, store, booter.catalog)
    store.close()


def _tar(data: bytes) -> dict[str, tarfile.TarInfo | bytes]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        for m in t.getmembers():
            out[m.name] = t.extractfile(m).read() if m.isfile() else m
    return out


def test_identity_files_and_templates(rig):
    data_dir, store, booter, renderer = rig
    ov = data_dir / "overlays" / "motd"
    (ov / "etc").mkdir(parents=True)
    (ov / "etc" / "motd.j2").write_text("{{ node.hostname }} in {{ node.labels.rack }}; peers:"
                                        "{% for n in nodes %} {{ n.hostname }}{% endfor %}\n")
    (ov / "etc" / "static.conf").write_text("as is {{ not rendered }}\n")
    (ov / "etc" / "static.conf").chmod(0o640)
    (ov / "etc" / "link").symlink_to("/etc/passwd")  # kept as a link, never read
    store.nodes.put(NodeSpec(MAC, image="demo", hostname="n1", ip="172.22.33.50", labels={"rack": "a1"},
                            ssh_keys=[KEY], overlays=["motd"]))
    store.nodes.put(NodeSpec(OTHER, image="demo", hostname="n2"))
    store.leases.save([LeaseRecord(lease_key(None, OTHER), "172.22.33.101", OTHER, time.time() + 600)])
    d = booter.decide(Client(MAC))
    files = _tar(renderer.archive(d))
    assert files["etc/hostname"] == b"n1\n"
    hosts = files["etc/hosts"].decode()
    assert "172.22.33.50\tn1" in hosts and "172.22.33.101\tn2" in hosts and "127.0.1.1\tn1" in hosts
    assert files["root/.ssh/authorized_keys"] == (KEY + "\n").encode()
    assert files["root/.ssh"].mode == 0o700 and len(files["etc/machine-id"].strip()) == 32
    assert files["etc/motd"] == b"n1 in a1; peers: n1 n2\n"
    assert files["etc/static.conf"] == b"as is {{ not rendered }}\n"
    members = {m.name: m for m in tarfile.open(fileobj=io.BytesIO(renderer.archive(d))).getmembers()}
    assert members["etc/static.conf"].mode == 0o640
    assert members["etc/link"].issym() and members["etc/link"].linkname == "/etc/passwd"
    assert members["etc/ssh/ssh_host_ed25519_key"].mode == 0o600
    assert f"MACAddress={MAC}" in files["etc/systemd/network/10-ramboot-boot.network"].decode()
    assert "HostCertificate /etc/ssh/ssh_host_ed25519_key-cert.pub" in \
        files["etc/ssh/sshd_config.d/ramboot.conf"].decode()


def test_host_keys_stay_and_are_certified_by_the_ca(rig, tmp_path):
    data_dir, store, booter, renderer = rig
    store.nodes.put(NodeSpec(MAC, image="demo", hostname="n1", ip="172.22.33.50"))
    d = booter.decide(Client(MAC))
    first, second = renderer.archive(d), renderer.archive(d)
    assert first == second  # reproducible: the sha256 served beside it matches
    again = OverlayRenderer(data_dir, store, booter.catalog).archive(d)  # another server process, same store
    assert again == first
    files = _tar(first)
    cert = tmp_path / "cert.pub"
    cert.write_bytes(files["etc/ssh/ssh_host_ed25519_key-cert.pub"])
    shown = subprocess.run(["ssh-keygen", "-L", "-f", str(cert)], capture_output=True, text=True, check=True).stdout
    assert "host certificate" in shown and "n1" in shown and "172.22.33.50" in shown
    ca_line = renderer.identities.known_hosts_line(["n1"])
    assert ca_line.startswith("@cert-authority n1 ssh-ed25519 ")
    ca_fp = subprocess.run(["ssh-keygen", "-lf", "-"], input=ca_line.split(" ", 2)[2], capture_output=True,
                           text=True, check=True).stdout.split()[1]
    assert f"Signing CA: ED25519 {ca_fp}" in shown
    store.nodes.put(NodeSpec(MAC, image="demo", hostname="renamed", ip="172.22.33.50"))
    renamed = _tar(renderer.archive(booter.decide(Client(MAC))))
    assert renamed["etc/ssh/ssh_host_ed25519_key"] == files["etc/ssh/ssh_host_ed25519_key"]  # same key
    assert renamed["etc/ssh/ssh_host_ed25519_key-cert.pub"] != files["etc/ssh/ssh_host_ed25519_key-cert.pub"]


def test_a_node_on_a_new_nic_keeps_its_identity(rig):
    _, store, booter, renderer = rig
    uuid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    store.nodes.put(NodeSpec(MAC, image="demo", hostname="n1", uuid=uuid))
    old = _tar(renderer.archive(booter.decide(Client(MAC))))
    new = _tar(renderer.archive(booter.decide(Client(OTHER, uuid=uuid))))
    assert new["etc/ssh/ssh_host_ed25519_key"] == old["etc/ssh/ssh_host_ed25519_key"]
    assert new["etc/machine-id"] == old["etc/machine-id"] and new["etc/hostname"] == b"n1\n"
    assert f"MACAddress={OTHER}" in new["etc/systemd/network/10-ramboot-boot.network"].decode()


@pytest.mark.parametrize(
    "template, fragment",
    [("{{ node.nope }}", "motd.j2"), ("{% for %}", "line 1"), ("{{ ''.__class__.__mro__ }}", "motd.j2")],
    ids=["undefined", "syntax", "sandbox"],
)
def test_bad_templates_say_which_file(rig, template, fragment):
    data_dir, store, booter, renderer = rig
    (data_dir / "overlays" / "motd").mkdir(parents=True)
    (data_dir / "overlays" / "motd" / "motd.j2").write_text(template)
    store.nodes.put(NodeSpec(MAC, image="demo", overlays=["motd"]))
    with pytest.raises(OverlayError, match=fragment) as e:
        renderer.archive(booter.decide(Client(MAC)))
    assert "overlay 'motd'" in str(e.value) and "\n" not in str(e.value)


def test_archive_is_reproducible_and_ordered():
    from ramboot.overlays import File

    a = archive([File("b", 0o644, b"2"), File("a", 0o755), File("a/x", 0o600, b"1")])
    b = archive([File("a/x", 0o600, b"1"), File("b", 0o644, b"2"), File("a", 0o755)])
    assert a == b and [m.name for m in tarfile.open(fileobj=io.BytesIO(a))] == ["a", "a/x", "b"]


# -- served only to its node -----------------------------------------------------------
def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_overlay_served_to_the_lease_holder_only(data_dir, caplog):
    write_fake_image(data_dir, "demo")
    srv = LiveServer(data_dir, '[dhcp]\nmode = "full"\nrange = "172.22.33.100-172.22.33.200"\n'
                               '[security]\noverlay_over_http = true\n')
    try:
        srv.store.nodes.put(NodeSpec(MAC, image="demo", hostname="n1", ssh_keys=[KEY]))
        url = f"{srv.base}/overlay/{MAC.replace(':', '-')}.tar"
        before = _refused(srv)
        script = f"{srv.base}/boot/{MAC.replace(':', '-')}.ipxe"
        assert b"ramboot.token=" not in _get(script)[1]  # 127.0.0.1 holds no lease for it: no credential
        assert _get(url)[0] == 403
        assert _get(url + ".sha256")[0] == 403
        srv.store.leases.save([LeaseRecord(lease_key(None, MAC), "127.0.0.1", MAC, time.time() + 600)])
        token = _get(script)[1].split(b"ramboot.token=")[1].split()[0].decode()
        st2, sha = _get(url + ".sha256", token)
        st, body = _get(url, token)
        assert (st, st2) == (200, 200)
        assert sha.split()[0].decode() == hashlib.sha256(body).hexdigest()
        assert _tar(body)["root/.ssh/authorized_keys"] == (KEY + "\n").encode()
        other = f"{srv.base}/overlay/{OTHER.replace(':', '-')}.tar"
        assert _get(other, token)[0] == 403  # the credential is MAC's, not OTHER's
        assert _refused(srv) - before == 3
    finally:
        srv.close()
    assert any("overlay refused" in r.getMessage() for r in caplog.records)


def _refused(srv) -> float:
    """The process's count of refused overlay requests (the metrics are process-wide)."""
    import re

    m = re.search(rb'ramboot_http_refused_total\{kind="overlay"\} ([0-9.]+)', _get(f"{srv.base}/metrics", srv.token)[1])
    return float(m.group(1)) if m else 0.0


def test_overlay_never_over_tftp_namespace(data_dir):
    write_fake_image(data_dir, "demo")
    srv = LiveServer(data_dir)
    try:
        assert srv.namespace.resolve(f"overlay/{MAC.replace(':', '-')}.tar") is None  # TFTP's way in
    finally:
        srv.close()


# -- the CLI -------------------------------------------------------------------------------
def test_cli_profile_node_overlay_and_known_hosts(data_dir, tmp_path):
    write_fake_image(data_dir, "demo")
    cfg = tmp_path / "ramboot.toml"
    cfg.write_text(f'data_dir = "{data_dir}"\n')
    keyfile = tmp_path / "id.pub"
    keyfile.write_text(f"# my key\n{KEY}\n")
    (data_dir / "overlays" / "motd").mkdir(parents=True)
    (data_dir / "overlays" / "motd" / "motd.j2").write_text("hello {{ node.hostname }} ({{ node.labels.role }})\n")
    run = lambda *a: CliRunner().invoke(main, [*a, "--config", str(cfg)], catch_exceptions=False)  # noqa: E731
    r = run("profile", "add", "compute", "--image", "demo", "--ssh-key", str(keyfile), "--overlay", "motd",
            "--label", "role=worker")
    assert r.exit_code == 0, r.output
    assert "compute" in run("profile", "list").output
    r = run("node", "add", MAC, "--hostname", "n1", "--profile", "compute")
    assert r.exit_code == 0, r.output
    r = run("node", "show", MAC)
    assert "profiles: compute" in r.output, r.output
    r = run("overlay", "render", "motd", MAC)
    assert r.exit_code == 0 and r.output == "==> /motd (0644)\nhello n1 (worker)\n", r.output
    r = run("ssh", "known-hosts")
    assert r.exit_code == 0 and r.output.startswith("@cert-authority n1 ssh-ed25519 "), r.output
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key\n")
    r = run("node", "add", OTHER, "--ssh-key", str(bad))
    assert r.exit_code != 0 and "--ssh-key" in r.output and "not an OpenSSH public key" in r.output
    r = run("overlay", "render", "nope", MAC)
    assert r.exit_code != 0 and "no such overlay" in r.output
    assert run("profile", "rm", "compute").exit_code == 0
    assert "no profile compute" in run("profile", "show", "compute").output


def test_the_database_that_keeps_host_keys_is_private(tmp_path):
    path = tmp_path / "ramboot.db"
    Store(f"sqlite:///{path}").close()
    assert path.stat().st_mode & 0o777 == 0o600
