"""The config: valid files load, every mistake is one line naming the key."""

import pytest

from ramboot.config import ConfigError, load_config, parse_config

SPEC_EXAMPLE = """
data_dir = "/var/lib/ramboot"
[network]
interface = "rb0"
address   = "172.22.33.2"
[dhcp]
mode  = "full"
range = "172.22.33.100-172.22.33.200"
lease_time = 3600
[tftp]
port = 69
[http]
port = 80
[boot]
default_image = "demo"
unknown_nodes = "boot"
loader = "ipxe"
"""


def test_spec_example_loads():
    cfg = parse_config(SPEC_EXAMPLE)
    assert str(cfg.network.address) == "172.22.33.2"
    assert cfg.dhcp.mode == "full"
    assert [str(a) for a in cfg.dhcp.range_bounds()] == ["172.22.33.100", "172.22.33.200"]
    assert cfg.database_url == "sqlite:////var/lib/ramboot/ramboot.db"


@pytest.mark.parametrize(
    "text, expected",
    [
        ('[dhcp]\nmode = "fulll"\nrange="1.1.1.1-1.1.1.2"', "dhcp.mode: must be one of 'full', 'proxy' or 'off'"),
        ('[cluster]\nname = "bad name!"', "cluster.name: letters, digits, '.', '_' and '-', starting with a letter "
         "or digit, at most 63; got 'bad name!'"),
        ("[dhcp]\nrange = \"10.0.0.9-10.0.0.1\"\nmode='full'", "dhcp.range"),
        ('[dhcp]\nmode = "full"', 'dhcp: Value error, dhcp.mode = "full" needs dhcp.range'),
        ("[tftp]\nport = 70000", "tftp.port"),
        ('[security]\ntpm_enroll = "tofu"', "security.tpm_enroll: must be one of 'manual' or 'first-boot'"),
        ("[security]\ntpm_measured = 2", "security.tpm_measured"),
        ('[boot]\nunknown_nodes = "maybe"', "boot.unknown_nodes: must be one of"),
        ("[http]\nprot = 80", "http.prot: unknown key"),
        ("bogus = 1", "bogus: unknown key"),
        ("[network]\naddress = \"300.1.1.1\"", "network.address"),
        ("[dhcp\n", "not valid TOML"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(text, expected):
    with pytest.raises(ConfigError) as e:
        parse_config(text, "ramboot.toml")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("ramboot.toml: ")
    assert expected in msg


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.toml")
