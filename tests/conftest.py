"""Shared fixtures: a config, a store and a booter in a temporary data dir."""

from __future__ import annotations

from pathlib import Path

import pytest

import suite_rules
from ramboot.config import parse_config
from ramboot.images.manifest import FileEntry, Manifest
from ramboot.inventory.store import Store
from ramboot.policy import Booter


def write_fake_image(data_dir: Path, name: str = "demo", rootfs: bytes = b"root") -> Manifest:
    """A tiny image with a real manifest, for tests that only need the files to exist."""
    import hashlib

    d = data_dir / "images" / name
    d.mkdir(parents=True, exist_ok=True)
    files = {"vmlinuz": b"kernel", "initrd.img": b"initrd", "rootfs.squashfs": rootfs}
    m = Manifest(name=name, source="test", created="2026-01-01T00:00:00Z", kernel_version="test")
    for fname, data in files.items():
        (d / fname).write_bytes(data)
        m.files[fname] = FileEntry(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (d / "image.toml").write_text(m.to_toml())
    return m


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def make_booter(data_dir: Path):
    stores = []

    def make(extra: str = "", server_ip: str = "172.22.33.2") -> Booter:
        cfg = parse_config(f'data_dir = "{data_dir}"\n{extra}')
        store = Store.for_config(cfg)
        stores.append(store)
        return Booter(cfg, store.directory, server_ip)

    make.stores = stores  # type: ignore[attr-defined]  # the store behind each booter made, in order
    yield make
    for s in stores:
        s.close()


def pytest_configure(config: pytest.Config) -> None:
    """The suite's rules (docs/testing.md): no skip in CI, at collection time either; no unlinked xfail."""
    suite_rules.register(config)


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway PostgreSQL cluster for this test process: initdb in a temporary folder, a unix
    socket there and no TCP, stopped and deleted at the end (never the system's cluster)."""
    import os

    from ramboot.lab.pg import TempCluster

    if os.geteuid() != 0:
        pytest.fail("the PostgreSQL tests need root (initdb runs as the postgres user)")
    cluster = TempCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database in the session's cluster, named after the test."""
    import hashlib

    return pg_cluster.create_db("t_" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:16])
