"""What makes a node the same machine at every boot: SSH host keys, their certificates, a machine id.

The server makes each once, the first time a node needs it, and keeps it in
the store's `secrets` (so several servers on one database agree). Host keys
are signed by ramboot's own SSH CA as host certificates: one
`@cert-authority` line (`ramboot ssh known-hosts`), scoped to the cluster's names
and addresses, makes every node trusted, and a node that is rebuilt keeps its key anyway.
"""

from __future__ import annotations

import subprocess
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from .inventory.ports import SecretSource

HOST_KEY_TYPES = ("ed25519", "ecdsa", "rsa")
_KEYGEN_ARGS = {"ed25519": ["-t", "ed25519"], "ecdsa": ["-t", "ecdsa", "-b", "256"], "rsa": ["-t", "rsa", "-b", "3072"]}
CA_NAME = "ramboot-ssh-ca"


def cluster_patterns(hostnames: Iterable[str | None], ips: Iterable[str], domain: str | None) -> list[str]:
    """known_hosts host patterns for the cluster: its nodes' hostnames and addresses, and
    `*.DOMAIN` when a domain is configured; sorted, once each."""
    names = {h for h in hostnames if h} | set(ips)
    if domain:
        names.add(f"*.{domain.strip('.')}")
    return sorted(names)


class IdentityError(Exception):
    """ssh-keygen is missing or failed; the message says which and how to fix it."""


@dataclass(frozen=True)
class HostKey:
    kind: str  # ed25519 | ecdsa | rsa
    private: str  # OpenSSH private key
    public: str  # one line
    certificate: str  # one line, signed by the CA for the node's names


def _key_pair(kind: str, comment: str) -> str:
    """What is kept for a host key: the public line, a newline, the private key."""
    return "\n".join(reversed(_keygen(kind, comment)))


def _keygen(kind: str, comment: str) -> tuple[str, str]:
    """A new key pair (private, public line) from ssh-keygen."""
    with tempfile.TemporaryDirectory(prefix="ramboot-key-") as d:
        path = Path(d) / "key"
        _run(["ssh-keygen", "-q", *_KEYGEN_ARGS[kind], "-N", "", "-C", comment, "-f", str(path)])
        return path.read_text(), (path.with_suffix(".pub")).read_text().strip()


def _run(argv: list[str]) -> None:
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise IdentityError("ssh-keygen is missing: apt-get install openssh-client") from None
    except subprocess.CalledProcessError as e:
        raise IdentityError(f"ssh-keygen failed: {e.stderr.strip() or e.returncode}") from None


class Identities:
    """Node identities kept in the store."""

    def __init__(self, secrets: SecretSource):
        self.secrets = secrets  # the store's secrets part

    def ca(self) -> tuple[str, str]:
        """The CA's private key and public line (made once)."""
        private = self.secrets.get("ssh-ca:private", lambda: _keygen("ed25519", CA_NAME)[0])
        public = self.secrets.get("ssh-ca:public", lambda: self._public_of(private))
        return private, public

    def known_hosts_line(self, patterns: list[str]) -> str:
        """The one line that makes the nodes' certified host keys trusted, for `patterns` only:
        never `*`, so a leaked CA key cannot vouch for every host a user connects to."""
        return f"@cert-authority {','.join(patterns)} {self.ca()[1]}"

    def machine_id(self, node: str) -> str:
        """A machine id for /etc/machine-id: random once, then the same at every boot."""
        return self.secrets.get(f"machine-id:{node}", lambda: uuid.uuid4().hex)

    def host_keys(self, node: str, principals: list[str]) -> list[HostKey]:
        """The node's host keys (made once), each with a certificate for `principals`.

        A certificate is signed again only when the names change, so the
        archive a node fetches is the same from one request to the next.
        """
        out = []
        for kind in HOST_KEY_TYPES:
            pair = self.secrets.get(f"ssh-host:{node}:{kind}", partial(_key_pair, kind, f"root@{node}"))
            public, private = pair.split("\n", 1)
            want = ",".join(principals)
            cert_key = f"ssh-cert:{node}:{kind}"
            kept = self.secrets.get(cert_key, partial(self._names_and_cert, public, node, principals))
            names, cert = kept.split("\n", 1)
            if names != want:
                cert = self._sign(public, node, principals)
                self.secrets.set(cert_key, want + "\n" + cert)
            out.append(HostKey(kind, private, public, cert.strip()))
        return out

    def _names_and_cert(self, public: str, node: str, principals: list[str]) -> str:
        """What is kept for a certificate: the names it was signed for, a newline, the certificate."""
        return ",".join(principals) + "\n" + self._sign(public, node, principals)

    def _sign(self, public: str, node: str, principals: list[str]) -> str:
        private, _ = self.ca()
        with tempfile.TemporaryDirectory(prefix="ramboot-sign-") as d:
            ca = Path(d) / "ca"
            ca.write_text(private)
            ca.chmod(0o600)
            key = Path(d) / "host.pub"
            key.write_text(public + "\n")
            _run(["ssh-keygen", "-q", "-s", str(ca), "-I", f"ramboot:{node}", "-h",
                  "-n", ",".join(principals), str(key)])
            return (Path(d) / "host-cert.pub").read_text().strip()

    @staticmethod
    def _public_of(private: str) -> str:
        with tempfile.TemporaryDirectory(prefix="ramboot-ca-") as d:
            path = Path(d) / "ca"
            path.write_text(private)
            path.chmod(0o600)
            try:
                out = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], check=True, capture_output=True,
                                     text=True).stdout
            except (FileNotFoundError, subprocess.CalledProcessError) as e:
                raise IdentityError(f"ssh-keygen cannot read the CA key: {e}") from None
            return out.strip() + f" {CA_NAME}"
