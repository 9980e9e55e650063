"""What an operator meets first: the README's commands as written, make's installs, the service
files, the licence and what the wheel ships."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.helpers import readme_flow

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
VENV = Path(sys.prefix)
UNITS = ["sbusr-server.service", "sbusr-api.service"]


# ---------------------------------------------------------------------------- the README's commands

def readme_commands() -> list[str]:
    """Every command line of the README's ```sh blocks (``$ `` prompts and bare lines)."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        lines = block.splitlines()
        prompted = any(line.startswith("$ ") for line in lines)
        for line in lines:
            if prompted and not line.startswith("$ "):
                continue  # sample output
            command = line.removeprefix("$ ").split("#", 1)[0].strip()
            if command:
                commands.append(command)
    return commands


def test_readme_commands_name_the_venv_programs():
    """A fresh shell after `make run` has no activated venv: sbusr's programs need their path."""
    commands = readme_commands()
    assert len(commands) > 15
    for command in commands:
        for part in re.split(r"&&|\|\||[;|&]", command):
            words = part.split()
            program = words[1] if words[:1] == ["sudo"] and len(words) > 1 else (words or [""])[0]
            assert not re.match(r"(sbusr-\w+|pip3?|tox|pytest|ruff|oslo-config-generator)$", program), command
    # inline examples with options, e.g. `.venv/bin/sbusr-api --config-file ...`
    for span in re.findall(r"`([^`\n]+)`", README):
        if re.match(r"(sbusr-\w+|pip3?|tox) +(-|\w+ -|install)", span) or re.match(r"python3? -m ", span):
            pytest.fail(f"README shows a command without its .venv/bin/ path: {span}")


def test_readme_names_only_make_targets_and_tox_envs_that_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in set(re.findall(r"(?:`|^)make (\w+)", README, re.M)):
        assert re.search(rf"^{target}:", makefile, re.M), target
    tox = (ROOT / "tox.ini").read_text()
    for env in set(re.findall(r"tox -e (\w+)", README)):
        assert f"[testenv:{env}]" in tox, env
    assert (VENV / "bin" / "tox").exists(), "tox is installed with the test tools (test-requirements.txt)"


def _private_network_available() -> str | None:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "unshare/ip (util-linux, iproute2) are not installed"
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--net", "ip", "link", "set", "lo", "up"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"this kernel refuses an unprivileged network namespace: {probe.stderr.strip()}"
    return None


@pytest.fixture
def checkout_copy(tmp_path):
    """The files a reader's checkout has, with this test's venv as its .venv (nothing reinstalled)."""
    root = tmp_path / "sbusr"
    root.mkdir()
    for name in ("Makefile", "README.md", "setup.cfg", "setup.py", "requirements.txt",
                 "test-requirements.txt"):
        shutil.copy2(ROOT / name, root / name)
    shutil.copytree(ROOT / "etc", root / "etc")
    (root / ".venv").symlink_to(VENV)
    return root


def test_readme_walk_through_runs_as_written(checkout_copy):
    """`make run`, then every `$` command of the first three sections, in fresh shells."""
    reason = _private_network_available()
    if reason:  # the README's fixed ports may only be used in a private network namespace
        pytest.skip(reason)
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--net", sys.executable, "-m",
                           "tests.helpers.readme_flow", str(checkout_copy)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]
    report = json.loads(done.stdout)
    results = report["results"]
    expected = [command for title in readme_flow.SECTIONS
                for command, _ in readme_flow.shell_examples(readme_flow.section(README, title))
                if not command.endswith("&")]
    assert [r["command"] for r in results] == expected
    failed = [r for r in results if not r["ok"]]
    assert not failed, json.dumps(failed, indent=1) + "\n" + report["stack_log"][-4000:]
    assert "Traceback" not in report["stack_log"], report["stack_log"][-4000:]


def test_vendor_install_line_works_from_a_checkout():
    line = re.search(r"`(\.venv/bin/pip install [^`]+)`", README)
    assert line, "README lost the vendor backend's install command"
    command = line.group(1)
    assert "[vendor]" in command
    done = subprocess.run(["bash", "-c", command + " --dry-run --quiet"], cwd=ROOT,
                          env=dict(os.environ, PATH=f"{VENV / 'bin'}:{os.environ['PATH']}"),
                          capture_output=True, text=True, timeout=300)
    # run as written (with the venv the test runs in) and only resolved, not installed
    assert done.returncode == 0, done.stderr[-3000:]
    assert "hesong-ipsc-busnetcli" in (ROOT / "setup.cfg").read_text()


# ---------------------------------------------------------------------------- make

FAKE_PYTHON = textwrap.dedent("""\
    #!/bin/sh
    # stands in for python: `-m venv DIR` copies itself to DIR/bin/python; `-m pip ...` is logged
    # with its start and end, slowly, so overlapping installs would show
    log="$FAKE_LOG"
    if [ "$1 $2" = "-m venv" ]; then
        echo "venv $$ start" >> "$log"; sleep 1
        mkdir -p "$3/bin"; cp "$0" "$3/bin/python"
        echo "venv $$ end" >> "$log"; exit 0
    fi
    shift 2
    echo "pip $$ start $*" >> "$log"; sleep 1; echo "pip $$ end" >> "$log"
    """)


def test_make_run_and_make_test_installs_take_turns(checkout_copy, tmp_path):
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "install.log"
    venv = tmp_path / "venv"
    env = dict(os.environ, FAKE_LOG=str(log))
    args = ["make", f"PYTHON={fake}", f"VENV={venv}"]
    run = subprocess.Popen([*args, f"{venv}/.run-stamp"], cwd=checkout_copy, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    test = subprocess.Popen([*args, f"{venv}/.installed-stamp"], cwd=checkout_copy, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for proc in (run, test):
        assert proc.wait(120) == 0, proc.stdout.read().decode()
    events = log.read_text().splitlines()
    running = 0
    for event in events:
        running += 1 if " start" in event else -1
        assert running <= 1, f"two installs into one venv at once:\n{log.read_text()}"
    installs = [e for e in events if e.startswith("pip") and "install" in e and " -e ." in e]
    assert any("-r test-requirements.txt" not in e for e in installs), "make run installs sbusr alone"
    assert any("-r test-requirements.txt" in e for e in installs), "make test adds the test tools"
    assert (venv / ".run-stamp").exists() and (venv / ".installed-stamp").exists()
    # up to date now: a second `make run` installs nothing
    before = len(events)
    subprocess.run([*args, f"{venv}/.run-stamp"], cwd=checkout_copy, env=env, check=True, capture_output=True)
    assert len(log.read_text().splitlines()) == before


def test_make_run_recipe_installs_no_test_tools():
    done = subprocess.run(["make", "-n", "-B", "VENV=/nonexistent/venv", "run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "test-requirements" not in done.stdout
    assert "flock" in done.stdout


# ---------------------------------------------------------------------------- service files

def _systemd_analyze() -> str | None:
    return shutil.which("systemd-analyze")


@pytest.mark.skipif(_systemd_analyze() is None,
                    reason="systemd-analyze is not installed (Debian package systemd); the CI image has it")
def test_unit_files_verify(tmp_path):
    """`systemd-analyze verify` on the shipped units, their ExecStart pointed at this venv."""
    for name in UNITS:
        text = (ROOT / "etc" / "systemd" / name).read_text()
        (tmp_path / name).write_text(text.replace("/opt/sbusr/venv", str(VENV)))
    done = subprocess.run([_systemd_analyze(), "verify", *(str(tmp_path / n) for n in UNITS)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "" and done.stderr.strip() == "", done.stderr
    # the check itself catches a broken unit
    (tmp_path / "broken.service").write_text("[Service]\nExecStart=/bin/true\nTimeoutStopSec=soon\n")
    broken = subprocess.run([_systemd_analyze(), "verify", str(tmp_path / "broken.service")],
                            capture_output=True, text=True, timeout=120)
    assert "TimeoutStopSec" in broken.stderr or "time" in broken.stderr


@pytest.mark.parametrize("name, program", [("sbusr-server.service", "sbusr-server"),
                                           ("sbusr-api.service", "sbusr-api")])
def test_unit_files_reload_stop_restart_and_user(name, program):
    text = (ROOT / "etc" / "systemd" / name).read_text()
    settings = dict(line.split("=", 1) for line in text.splitlines()
                    if "=" in line and not line.startswith("#"))
    assert settings["ExecStart"] == f"/opt/sbusr/venv/bin/{program} --config-file /etc/sbusr/sbusr.conf"
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert settings["KillSignal"] == "SIGTERM"
    assert settings["Restart"] == "on-failure"
    assert settings["RestartPreventExitStatus"] == "2"  # a configuration error: a restart cannot help
    assert settings["User"] == "sbusr"
    graceful = 10  # [server] graceful_timeout default
    assert int(settings["TimeoutStopSec"]) > graceful
    assert "journalctl -u " + program in text
    # the README's deploying steps use the same paths
    deploying = README[README.index("## Deploying"):]
    assert "/opt/sbusr/venv" in deploying and "/etc/sbusr/sbusr.conf" in deploying
    assert f"etc/systemd/{name}" in deploying


# ---------------------------------------------------------------------------- licence and package

def test_licence_matches_setup_cfg():
    licence = (ROOT / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in licence
    assert "END OF TERMS AND CONDITIONS" in licence
    setup = (ROOT / "setup.cfg").read_text()
    assert "\nlicense = Apache-2.0\n" in setup
    for field in ("author", "author_email", "home_page"):
        assert re.search(rf"^{field} = \S", setup, re.M), field


def test_wheel_ships_the_sample_config_units_and_licence(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = tmp_path.glob("sbusr-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    data = {n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n}
    assert {"share/sbusr/sbusr.conf.sample", "share/sbusr/sbusr.conf",
            "share/sbusr/oslo-config-generator/sbusr.conf",
            "share/sbusr/systemd/sbusr-server.service", "share/sbusr/systemd/sbusr-api.service"} <= data
    assert any(n.endswith("/LICENSE") for n in names)
    assert {"sbusr/api/templates/status.html", "sbusr/api/templates/login.html"} <= set(names)  # /status
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "License: Apache-2.0" in metadata or "License-Expression: Apache-2.0" in metadata
    assert "Author: " in metadata and "Home-page: " in metadata
    sample = next(n for n in names if n.endswith("share/sbusr/sbusr.conf.sample"))
    assert zipfile.ZipFile(wheel).read(sample).decode() == (ROOT / "etc" / "sbusr.conf.sample").read_text()
