"""Configuration: the sample file, start-up checks, file search, relative paths, transport URLs."""

import os
import subprocess
import sys
from pathlib import Path

import oslo_messaging
import pytest
from oslo_config import cfg

from sbusr import config, opts
from sbusr.transport.url import client_config_from_url

ROOT = Path(__file__).resolve().parents[2]


def test_sample_config_matches_generator(tmp_path):
    out = tmp_path / "sample.conf"
    subprocess.run([sys.executable, "-m", "oslo_config.generator", "--config-file",
                    str(ROOT / "etc" / "oslo-config-generator" / "sbusr.conf"), "--output-file", str(out)],
                   check=True, capture_output=True, cwd=ROOT)
    assert out.read_text() == (ROOT / "etc" / "sbusr.conf.sample").read_text(), (
        "etc/sbusr.conf.sample is stale: run `make genconfig`")


def test_sample_config_covers_the_options_operators_set():
    sample = (ROOT / "etc" / "sbusr.conf.sample").read_text()
    for line in ("#executor_thread_pool_size = 64", "#transport_url = smartbus://", "#debug = false",
                 "#log_file = <None>", "#mode = thread", "#call_timeout = 30.0"):
        assert line in sample
    assert "rabbit://" not in sample.split("#transport_url = ")[1].splitlines()[0]
    # mutable options say so in the sample
    call_timeout = sample[:sample.index("#call_timeout = 30.0")].rsplit("\n\n", 1)[1]
    assert "can be changed without restarting" in call_timeout


def test_generator_namespaces_are_the_ones_reload_reports():
    text = (ROOT / "etc" / "oslo-config-generator" / "sbusr.conf").read_text()
    namespaces = [line.split("=", 1)[1].strip() for line in text.splitlines() if line.startswith("namespace")]
    assert tuple(namespaces) == opts.NAMESPACES


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


START_UP_ERRORS = [
    ("sbusr.cmd.server", "[execution]\nmode = proccess\n",
     "[execution] mode in {conf}: Valid values are [thread, process], but found 'proccess'"),
    ("sbusr.cmd.server", "[execution]\nmode = fork\n", "[execution] mode in {conf}"),
    ("sbusr.cmd.server", "[smartbus]\nunit_id = 99\n",
     "[smartbus] unit_id in {conf}: Should be less than or equal to 47"),
    ("sbusr.cmd.server", "[DEFAULT]\ntransport_url = smartbus://h:1/?unit_id=99\n",
     "bad transport_url: smartbus URL: unit_id 99 is not 0..47"),
    ("sbusr.cmd.server", "[DEFAULT]\ntransport_url = smartbus://h:1/?unit_id=abc\n", "bad transport_url"),
    ("sbusr.cmd.server", "[DEFAULT]\ntransport_url = smartbs://127.0.0.1:8089/\n",
     "transport_url smartbs:// is not supported: sbusr serves SmartBus only"),
    ("sbusr.cmd.server", "[DEFAULT]\ntransport_url = rabbit://guest:guest@127.0.0.1:5672/\n",
     "transport_url rabbit:// is not supported: sbusr serves SmartBus only"),
    ("sbusr.cmd.api", "[DEFAULT]\ntransport_url = rabbit://guest:guest@127.0.0.1:5672/\n",
     "transport_url rabbit:// is not supported: sbusr serves SmartBus only"),
    ("sbusr.cmd.api", "[api]\nlisten_port = 99999\n", "[api] listen_port in {conf}"),
    ("sbusr.cmd.api", "[DEFAULT]\ntransport_url = smartbus://h:1/?client_id=127\n",
     "the API's SmartBus client id would be 128"),
    ("sbusr.cmd.server", "[execution\nmode = thread\n", "Failed to parse {conf}"),
]


@pytest.mark.parametrize("command, text, message", START_UP_ERRORS)
def test_bad_configuration_fails_start_up_in_one_line(tmp_path, command, text, message):
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    done = subprocess.run([sys.executable, "-m", command, "--config-file", str(conf)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "configuration error: " in lines[0]
    assert message.format(conf=conf) in lines[0]
    assert "LocationInfo" not in lines[0] and "guest:guest" not in lines[0]


def _no_config_env(home: Path) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SNAP")} | {"HOME": str(home)}


SYSTEM_CONFIGS = [p for p in config.search_paths("sbusr-server") if p.startswith("/etc/")]


@pytest.mark.skipif(any(Path(p).exists() for p in SYSTEM_CONFIGS),
                    reason="this machine has a system-wide sbusr configuration in /etc")
def test_config_file_is_searched_where_openstack_services_look(tmp_path):
    command = [sys.executable, "-m", "sbusr.cmd.server"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=_no_config_env(tmp_path))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    for tried in (tmp_path / ".sbusr" / "sbusr.conf", tmp_path / "sbusr.conf", "/etc/sbusr/sbusr.conf",
                  "/etc/sbusr.conf", tmp_path / ".sbusr" / "sbusr-server.conf",
                  "/etc/sbusr/sbusr-server.conf"):
        assert str(tried) in done.stderr
    # found in ~/.sbusr/ without --config-file: its (bad) content is what stops the server now
    (tmp_path / ".sbusr").mkdir()
    (tmp_path / ".sbusr" / "sbusr.conf").write_text("[execution]\nworkers = many\n")
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=_no_config_env(tmp_path))
    assert done.returncode == 2
    assert f"[execution] workers in {tmp_path / '.sbusr' / 'sbusr.conf'}" in done.stderr


def test_unknown_options_are_named_with_the_closest_known_one(tmp_path):
    path = tmp_path / "sbusr.conf"
    path.write_text("[execution]\nmod = process\nworkers = 2\n[executon]\nmode = process\n"
                    "[endpoints]\ndirectory = methods\n[DEFAULT]\ndebug = true\n[oslo_messaging_rabbit]\n"
                    "heartbeat_rate = 2\n")
    conf = config.load(["--config-file", str(path)], "sbusr-server")
    warnings = config.unknown_options(conf)
    assert warnings == [
        f"unknown option [execution] mod in {path} is ignored; did you mean mode?",
        f"unknown section [executon] in {path} is ignored; did you mean [execution]?",
        f"unknown option [endpoints] directory in {path} is ignored; did you mean directories?",
    ]


def test_relative_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "sbusr.conf"
    path.write_text("[endpoints]\ndirectories = methods,../shared,/abs/m,~/mine\n"
                    "[smartbus]\nlibrary_path = lib/libbusnetcli.so\n")
    monkeypatch.chdir(tmp_path.parent)
    conf = config.load(["--config-file", str(path)], "sbusr-server")
    folders = [opts.config_relative(conf, f, "directories", "endpoints") for f in conf.endpoints.directories]
    assert folders == [str(tmp_path / "etc" / "methods"), str(tmp_path / "etc" / "../shared"), "/abs/m",
                       os.path.expanduser("~/mine")]
    assert opts.config_relative(conf, conf.smartbus.library_path, "library_path", "smartbus") == str(
        tmp_path / "etc" / "lib" / "libbusnetcli.so")
    conf.set_override("directories", ["here"], group="endpoints")
    assert opts.config_relative(conf, "here", "directories", "endpoints") == "here"  # not from a file


def test_mutable_options_are_the_documented_ones():
    mutable = {f"[{group}] {opt.name}" for group, group_opts in opts.list_opts() for opt in group_opts
               if opt.mutable}
    assert mutable == {
        "[endpoints] directories", "[endpoints] modules", "[endpoints] entry_points",
        "[endpoints] legacy_packages", "[endpoints] watch", "[execution] call_timeout",
        "[execution] max_tasks_per_child",
        "[execution] worker_init", "[smartbus] notify_ttl", "[server] graceful_timeout", "[api] auth_token",
        "[sql] databases", "[sql] directories", "[sql] connect_timeout",
    }
    readme = (ROOT / "README.md").read_text()
    for name in mutable:
        section, option = name[1:].split("] ")
        row = next(line for line in readme.splitlines() if line.startswith(f"| `[{section}]` |"))
        assert f"`{option}`" in row, name


@pytest.mark.parametrize("command, description", [
    ("sbusr.cmd.server", "Serve Python endpoint methods to Hesong IPSC flows"),
    ("sbusr.cmd.api", "HTTP API of sbusr"),
    ("sbusr.bench", "RPC throughput and latency of sbusr-server"),
    ("sbusr.cmd.ipsc", "An IPSC stand-in on SmartBus"),
])
def test_help_has_a_plain_description(command, description):
    done = subprocess.run([sys.executable, "-m", command, "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert " ".join(description.split()) in " ".join(done.stdout.split())
    assert "``" not in done.stdout and ":func:" not in done.stdout
