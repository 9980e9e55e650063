"""Inline comments: oslo.config keeps ``value  # comment`` whole, so sbusr refuses such a value in one
line naming the option, at start-up (exit 2) and at reload (refused, the running configuration stays);
the README's ini blocks and the shipped config keep their comments on lines of their own."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from oslo_config import cfg

from sbusr.testing import Stack
from sbusr.testing.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
INLINE = re.compile(r"\s[#;]")


def start(conf: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sbusr.cmd.server", "--config-file", str(conf)],
                          capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.mark.parametrize("section, line, what", [
    ("spooler", "processes = 1   # one is enough", "'#'"),
    ("spooler", "directory = sp  # the jobs", "'#'"),
    ("execution", "mode = thread ; or process", "';'"),
])
def test_an_inline_comment_is_refused_at_start_up_in_one_line(tmp_path, section, line, what):
    conf = tmp_path / "sbusr.conf"
    conf.write_text(f"[DEFAULT]\ntransport_url = smartbus://127.0.0.1:1/\n[{section}]\n{line}\n")
    done = start(conf, tmp_path)
    assert done.returncode == 2, done.stderr
    lines = (done.stdout + done.stderr).strip().splitlines()
    name = line.split("=")[0].strip()
    assert lines == [f"sbusr-server: configuration error: [{section}] {name} in {conf}: the value "
                     f"{line.split('= ', 1)[1]!r} holds an inline comment; oslo.config keeps everything "
                     f"after '=' (the {what} and what follows too), so put the comment on a line of its own"]
    assert "invalid literal" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sbusr.conf"]  # no folder named after a comment


def test_values_with_a_hash_inside_a_word_are_kept(tmp_path):
    from sbusr import config

    conf = tmp_path / "sbusr.conf"
    conf.write_text("[api]\nauth_token = s3cr#t;x\n[spooler]\ndirectory = jobs#1\n")
    loaded = config.load(["--config-file", str(conf)], "sbusr-server")
    assert config.problems(loaded) == []
    assert loaded.api.auth_token == "s3cr#t;x"


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_a_reload_with_an_inline_comment_is_refused_and_the_running_config_stays(tmp_path, mode,
                                                                                 on_session_bus):
    config = {"execution": {"mode": mode, "workers": 1, "call_timeout": 30}}
    with Stack(config=config, workdir=tmp_path, **on_session_bus) as stack:
        conf = stack.config_file()
        conf.write_text(conf.read_text().replace("call_timeout = 30", "call_timeout = 5  # shorter"))
        refused = stack.ipsc.call("sys.reload")
        assert refused["error"]["code"] == -32000, refused
        assert refused["error"]["message"] == (
            f"reload refused, nothing changed: [execution] call_timeout in {conf}: the value '5  # shorter' "
            "holds an inline comment; oslo.config keeps everything after '=' (the '#' and what follows too), "
            "so put the comment on a line of its own")
        wait_for(lambda: "reload refused" in stack.server.output(), "the refusal in the log")
        conf.write_text(conf.read_text().replace("call_timeout = 5  # shorter", "call_timeout = 5"))
        answer = stack.ipsc.call("sys.reload")["result"]
        assert answer["config"]["changed"] == {"[execution] call_timeout": [30.0, 5.0]}  # 30 stayed till now


def ini_blocks(text: str) -> list[str]:
    return re.findall(r"```ini\n(.*?)```", text, re.S)


def inline_comments(text: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "block.conf"
    path.write_text(text)
    sections: dict[str, dict[str, list[str]]] = {}
    cfg.ConfigParser(str(path), sections).parse()
    return [f"[{s}] {name} = {value}" for s, options in sections.items() for name, values in options.items()
            for value in values if INLINE.search(value)]


def test_readme_ini_blocks_parse_with_no_inline_comments(tmp_path):
    blocks = ini_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 5
    for block in blocks:
        assert inline_comments(block, tmp_path) == [], block


def test_shipped_config_has_no_inline_comments(tmp_path):
    for name in ("sbusr.conf", "sbusr.conf.sample"):
        assert inline_comments((ROOT / "etc" / name).read_text(), tmp_path) == [], name
