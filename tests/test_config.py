"""Configuration: the sample file is the generator's output; transport URLs map to identities."""

import subprocess
import sys
from pathlib import Path

import oslo_messaging
import pytest
from oslo_config import cfg

from sbusr import opts
from sbusr.driver_smartbus import client_config_from_url

ROOT = Path(__file__).resolve().parent.parent


def test_sample_config_matches_generator(tmp_path):
    out = tmp_path / "sample.conf"
    subprocess.run([sys.executable, "-m", "oslo_config.generator", "--namespace", "sbusr",
                    "--output-file", str(out)], check=True, capture_output=True)
    assert out.read_text() == (ROOT / "etc" / "sbusr.conf.sample").read_text(), (
        "etc/sbusr.conf.sample is stale: run `tox -e genconfig`")


def test_shipped_config_only_sets_known_options():
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[str(ROOT / "etc" / "sbusr.conf")])
    assert conf.smartbus.embedded_bus is True
    assert conf.transport_url.startswith("smartbus://")
    known = {group: {o.name for o in group_opts} for group, group_opts in opts.all_opts()}
    section = None
    for line in (ROOT / "etc" / "sbusr.conf").read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#"):
            assert line.split("=")[0].strip() in known[section], line


def _config(url, **overrides):
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[])
    for name, value in overrides.items():
        conf.set_override(name, value, group="smartbus")
    return client_config_from_url(conf, oslo_messaging.TransportURL.parse(conf, url))


def test_url_sets_identity_and_slave():
    c = _config("smartbus://usr:pwd@10.0.0.1:9000,10.0.0.2:9001/?unit_id=20&client_id=3&client_type=17")
    assert (c.host, c.port, c.slave_host, c.slave_port) == ("10.0.0.1", 9000, "10.0.0.2", 9001)
    assert (c.unit_id, c.client_id, c.client_type, c.user, c.password) == (20, 3, 17, "usr", "pwd")


def test_empty_url_falls_back_to_smartbus_group():
    c = _config("smartbus://", host="192.0.2.7", port=7000, unit_id=21, add_info="x")
    assert (c.host, c.port, c.unit_id, c.client_id, c.add_info) == ("192.0.2.7", 7000, 21, 1, "x")


@pytest.mark.parametrize("url", [
    "smartbus://h:1/?unit_id=abc",
    "smartbus://h:1/?unit_id=99",
    "smartbus://h:1/?client_id=500",
    "smartbus://h:1/?colour=blue",
    "smartbus://a:1,b:2,c:3/",
])
def test_bad_urls_are_rejected_clearly(url):
    with pytest.raises(oslo_messaging.InvalidTransportURL):
        _config(url)


@pytest.mark.parametrize("command, text, message", [
    ("sbusr.cmd.server", "[execution]\nmode = fork\n", "configuration error: Value for option mode"),
    ("sbusr.cmd.server", "[DEFAULT]\ntransport_url = smartbus://h:1/?unit_id=abc\n", "bad transport_url"),
    ("sbusr.cmd.api", "[api]\nlisten_port = 99999\n", "configuration error: Value for option listen_port"),
])
def test_bad_configuration_fails_start_up_in_one_line(tmp_path, command, text, message):
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    done = subprocess.run([sys.executable, "-m", command, "--config-file", str(conf)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    output = done.stdout + done.stderr
    assert message in output
    assert "Traceback" not in output
