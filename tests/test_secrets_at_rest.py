"""Secrets at rest (issue 23, item 9): the `secrets` table holds AES-GCM ciphertext under a key
file outside the database, so a database reader (a replica, a backup) gets no private key;
`ramboot ssh known-hosts` trusts the CA for the cluster's names and addresses only, not `*`."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ramboot.cli import main
from ramboot.config import parse_config
from ramboot.identity import Identities
from ramboot.inventory.sealed import SealError
from ramboot.inventory.store import LeaseRecord, NodeSpec, Store, StoreOpenError
from ramboot.proto.dhcp_core import lease_key

MAC, OTHER, STRANGER = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"
FAKE_PEM = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n" \
           "-----END OPENSSH PRIVATE KEY-----\n"


def _raw(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT name, value FROM secrets ORDER BY name").fetchall()


def _file_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*"))


def test_a_database_reader_finds_no_private_key(tmp_path: Path) -> None:
    cfg = parse_config(f'data_dir = "{tmp_path}"\n')
    store = Store.for_config(cfg)
    ids = Identities(store.secrets)
    keys = ids.host_keys(MAC, ["n1", "172.22.33.50"])
    ca_private, _ = ids.ca()
    store.close()
    key = tmp_path / "secrets.key"
    assert key.stat().st_mode & 0o777 == 0o600 and key.stat().st_size == 32  # made at first use
    rows = _raw(tmp_path / "ramboot.db")
    assert {n for n, _ in rows} >= {"ssh-ca:private", f"ssh-host:{MAC}:ed25519"}
    assert all(v.startswith("aesgcm1:") for _, v in rows)
    body = [ln for k in keys for ln in k.private.splitlines() if "PRIVATE KEY" not in ln and len(ln) > 20]
    body += [ln for ln in ca_private.splitlines() if "PRIVATE KEY" not in ln and len(ln) > 20]
    raw = _file_bytes(tmp_path / "ramboot.db")
    assert b"PRIVATE KEY" not in raw and body and not any(ln.encode() in raw for ln in body)
    again = Store.for_config(cfg)  # the same key opens them: another process, the same identity
    assert Identities(again.secrets).host_keys(MAC, ["n1", "172.22.33.50"]) == keys
    again.close()


def test_rows_kept_in_clear_are_sealed_at_first_open(tmp_path: Path) -> None:
    db = tmp_path / "ramboot.db"
    Store(f"sqlite:///{db}").close()  # an older version's database
    with sqlite3.connect(db) as c:
        c.execute("INSERT INTO secrets (name, value) VALUES ('ssh-ca:private', ?)", (FAKE_PEM,))
        c.execute("INSERT INTO secrets (name, value) VALUES ('machine-id:x', 'abc')")
    assert b"PRIVATE KEY" in _file_bytes(db)
    store = Store.for_config(parse_config(f'data_dir = "{tmp_path}"\n'))
    assert all(v.startswith("aesgcm1:") for _, v in _raw(db))
    assert store.secrets.get("ssh-ca:private", lambda: "new") == FAKE_PEM
    store.close()
    assert b"PRIVATE KEY" not in _file_bytes(db) and b"b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ" not in \
        _file_bytes(db)  # no clear copy left in free pages or the WAL


def test_the_wrong_key_or_a_missing_one_stops_in_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ramboot.db'}"
    store = Store(url, tmp_path / "a.key")
    store.secrets.get("ssh-ca:private", lambda: FAKE_PEM)
    store.close()
    with pytest.raises(StoreOpenError) as e:
        Store(url, tmp_path / "b.key")  # a second server given no key file: never a new key over sealed rows
    assert "missing" in str(e.value) and "secrets_key" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "b.key").exists()
    (tmp_path / "b.key").write_bytes(b"\x01" * 32)
    (tmp_path / "b.key").chmod(0o600)
    with pytest.raises(StoreOpenError) as e:
        Store(url, tmp_path / "b.key")
    assert "AES-GCM check failed" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("mode, size, why", [(0o640, 32, "chmod 600"), (0o604, 32, "chmod 600"),
                                             (0o600, 16, "32 random bytes")])
def test_an_exposed_or_malformed_key_is_refused(tmp_path: Path, mode: int, size: int, why: str) -> None:
    key = tmp_path / "secrets.key"
    key.write_bytes(b"\x02" * size)
    key.chmod(mode)
    cfg = tmp_path / "ramboot.toml"
    cfg.write_text(f'data_dir = "{tmp_path}"\n')
    r = CliRunner().invoke(main, ["node", "list", "--config", str(cfg)])
    assert r.exit_code != 0 and why in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_a_sealed_value_moved_to_another_row_does_not_open(tmp_path: Path) -> None:
    db = tmp_path / "ramboot.db"
    store = Store(f"sqlite:///{db}", tmp_path / "secrets.key")
    store.secrets.get("machine-id:a", lambda: "aaaa")
    store.secrets.get("machine-id:b", lambda: "bbbb")
    with sqlite3.connect(db) as c:  # a database writer swaps one node's secret into another's row
        c.execute("UPDATE secrets SET value = (SELECT value FROM secrets WHERE name = 'machine-id:a') "
                  "WHERE name = 'machine-id:b'")
    with pytest.raises(SealError, match="AES-GCM"):
        store.secrets.get("machine-id:b", lambda: "new")
    store.close()


def test_known_hosts_trusts_the_ca_for_the_cluster_only(tmp_path: Path) -> None:
    cfg = tmp_path / "ramboot.toml"
    cfg.write_text(f'data_dir = "{tmp_path}"\n')
    run = lambda: CliRunner().invoke(main, ["ssh", "known-hosts", "--config", str(cfg)])  # noqa: E731
    r = run()
    assert r.exit_code != 0 and "would name no host" in r.output
    store = Store.for_config(parse_config(cfg.read_text()))
    store.nodes.put(NodeSpec(MAC, hostname="n1", ip="172.22.33.50"))
    store.nodes.put(NodeSpec(OTHER, hostname="n2"))
    later = time.time() + 600
    store.leases.save([LeaseRecord(lease_key(None, OTHER), "172.22.33.101", OTHER, later),
                       LeaseRecord(lease_key(None, STRANGER), "172.22.33.102", STRANGER, later)])
    store.close()
    r = run()
    assert r.exit_code == 0, r.output
    assert r.output.startswith("@cert-authority 172.22.33.101,172.22.33.50,n1,n2 ssh-ed25519 "), r.output
    cfg.write_text(f'data_dir = "{tmp_path}"\n[dhcp]\nmode = "off"\ndomain = "lab.example"\n')
    line = run().output
    assert line.startswith("@cert-authority *.lab.example,172.22.33.101,172.22.33.50,n1,n2 ssh-ed25519 "), line
    known = tmp_path / "known_hosts"
    known.write_text(line)
    found = {h: subprocess.run(["ssh-keygen", "-F", h, "-f", str(known)], capture_output=True, text=True).returncode
             for h in ("n1", "172.22.33.101", "n9.lab.example", "172.22.33.102", "github.com", "evil.example")}
    assert found == {"n1": 0, "172.22.33.101": 0, "n9.lab.example": 0, "172.22.33.102": 1, "github.com": 1,
                     "evil.example": 1}, found  # ssh itself: the CA vouches for the cluster, not the world
