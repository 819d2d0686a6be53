"""A throwaway PostgreSQL cluster: `initdb` in a temporary folder, a unix socket there, no TCP.

For the tests and benchmarks of several servers on one database. The cluster
runs as the `postgres` user (PostgreSQL refuses root), listens on no TCP port
(`listen_addresses = ''`) and only on a socket in its own folder, and is stopped
and deleted by `stop()`. The system's own cluster is never touched.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


class ClusterError(Exception):
    """The cluster could not be made or started; one line saying why."""


def pg_bin(tool: str) -> str:
    """A PostgreSQL server tool (initdb, pg_ctl): Debian keeps them out of PATH."""
    found = shutil.which(tool)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if not cands:
        raise ClusterError(f"{tool}: not installed (Debian package postgresql; run: make setup)")
    return cands[-1]


class TempCluster:
    """One PostgreSQL cluster of our own; `url(db)` names a database in it (made by `create_db`)."""

    def __init__(self, user: str = "postgres"):
        self.user = user
        self.dir: Path | None = None
        self.started = False

    @property
    def socket_dir(self) -> Path:
        assert self.dir is not None
        return self.dir

    def _as_user(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = list(cmd) if os.geteuid() != 0 else ["runuser", "-u", self.user, "--", *cmd]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd="/")
        if p.returncode != 0:
            raise ClusterError(f"{' '.join(cmd[:2])}: {(p.stderr or p.stdout).strip().splitlines()[-1:]}")
        return p

    def start(self) -> TempCluster:
        try:
            pw = pwd.getpwnam(self.user)
        except KeyError:
            raise ClusterError(f"no {self.user!r} user: install PostgreSQL (run: make setup)") from None
        # Under /tmp (not a 0700 pytest folder): the postgres user must reach its socket.
        self.dir = Path(tempfile.mkdtemp(prefix="rbpg-"))
        try:
            os.chmod(self.dir, 0o755)
            if os.geteuid() == 0:
                os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            data = self.dir / "data"
            self._as_user(pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                          "--no-instructions")
            opts = f"-k {self.dir} -c listen_addresses='' -c max_connections=200 -c fsync=on"
            self._as_user(pg_bin("pg_ctl"), "-D", str(data), "-l", str(self.dir / "postgres.log"), "-o", opts,
                          "-w", "-t", "60", "start")
            self.started = True
        except BaseException:
            self.stop()
            raise
        return self

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@/{db}?host={self.socket_dir}"

    def psql(self, sql: str, db: str = "postgres") -> str:
        import psycopg

        with psycopg.connect(host=str(self.socket_dir), user="postgres", dbname=db, autocommit=True) as c:
            cur = c.execute(sql)
            return "" if cur.description is None else "\n".join("|".join(map(str, r)) for r in cur.fetchall())

    def create_db(self, name: str) -> str:
        """A fresh, empty database (dropped first if a previous run left one); its URL."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.dir is None:
            return
        data = self.dir / "data"
        if self.started or (data / "postmaster.pid").exists():
            try:
                self._as_user(pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop")
            except ClusterError:
                pass
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self) -> TempCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_for_socket(cluster: TempCluster, timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while not list(cluster.socket_dir.glob(".s.PGSQL.*")):
        if time.monotonic() > end:
            raise ClusterError("postgres: no socket appeared")
        time.sleep(0.05)
