"""Run the README's walk-through as a reader would, and report every command's output.

``python -m tests.helpers.readme_flow CHECKOUT`` must run in a private network namespace
(``unshare --user --map-root-user --net``, see tests/packaging/test_readme.py): the README's commands use
the shipped configuration's fixed ports (SmartBus 8089, HTTP 8080), which would collide with other
test runs on a shared machine. In order, in a copy of the checkout whose ``.venv`` is the test
venv, it:

1. starts ``make run`` (the README's first command) and waits until the stack answers;
2. runs each ``$ command`` of "Two commands", "Your first endpoint" (after writing the endpoint
   file and adding the README's ini lines to etc/sbusr.conf, as the text says) and "Starting
   flows over HTTP", each in a fresh ``bash -c`` with a minimal environment (no activated venv);
3. prints one JSON object: the results, and the stack's log.

A command ending in ``&`` runs in the background until the end, as in a terminal.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

SECTIONS = ("Two commands", "Your first endpoint", "Starting flows over HTTP: sbusr-api")
READY_TIMEOUT = 120.0
COMMAND_TIMEOUT = 60.0


def section(readme: str, title: str) -> str:
    start = readme.index(f"\n## {title}\n")
    end = readme.find("\n## ", start + 1)
    return readme[start:end if end != -1 else None]


def shell_examples(text: str) -> list[tuple[str, str]]:
    """(command, expected output) for every ``$ `` line of the ```sh blocks in ``text``."""
    examples: list[tuple[str, str]] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, _, expected = chunk.partition("\n")
            examples.append((command.strip(), expected.strip()))
    return examples


def expected_pattern(expected: str) -> re.Pattern[str]:
    """The README's sample output as a pattern: request ids vary, ``...`` stands for more."""
    parts = re.split(r'("id":"[0-9a-f]+"|\{\.\.\.\}|\.\.\.)', expected)
    pattern = ""
    for part in parts:
        if part.startswith('"id":'):
            pattern += r'"id":"[0-9a-f]+"'
        elif part == "{...}":
            pattern += r"\{.*\}"
        elif part == "...":
            pattern += r".*"
        else:
            pattern += re.escape(part)
    return re.compile(pattern, re.S)


def fresh_shell_env(home: Path) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}


def apply_ini(path: Path, block: str) -> None:
    """Set the README's ``name = value`` lines in their sections of ``path`` (as an editor would)."""
    lines = path.read_text().splitlines()
    section_name = None
    for line in block.splitlines():
        if line.startswith("["):
            section_name = line.strip()
            continue
        if "=" not in line or section_name is None:
            continue
        name = line.split("=", 1)[0].strip()
        start = lines.index(section_name) + 1
        end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
        for i in range(start, end):
            if lines[i].split("=", 1)[0].strip() == name and not lines[i].startswith("#"):
                lines[i] = line
                break
        else:
            lines.insert(end, line)
    path.write_text("\n".join(lines) + "\n")


def main(checkout: Path) -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    readme = (checkout / "README.md").read_text()
    home = checkout / "home"
    home.mkdir(exist_ok=True)
    env = fresh_shell_env(home)
    log = open(checkout / "stack.log", "wb")  # open until the end
    # `make run`; -o: never rebuild the venv under test from this copy (its install is tested apart)
    stack = subprocess.Popen(["make", "-o", ".venv/.run-stamp", "run"], cwd=checkout, env=env,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    background: list[subprocess.Popen[bytes]] = []
    results: list[dict[str, object]] = []
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            ping = subprocess.run(["bash", "-c", ".venv/bin/sbusr-ipsc call --timeout 2 sys.ping && "
                                   "curl -sf localhost:8080/health"], cwd=checkout, env=env,
                                  capture_output=True, text=True)
            if ping.returncode == 0:
                break
            if stack.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("make run did not come up")
            time.sleep(0.5)
        for title in SECTIONS:
            text = section(readme, title)
            if title == "Your first endpoint":
                code = re.search(r"```python\n(# (\S+)\n.*?)```", text, re.S)
                ini = re.search(r"```ini\n(.*?)```", text, re.S)
                assert code and ini, "README lost its first-endpoint example"
                (checkout / code.group(2)).parent.mkdir(parents=True, exist_ok=True)
                (checkout / code.group(2)).write_text(code.group(1))
                apply_ini(checkout / "etc" / "sbusr.conf", ini.group(1))
            for command, expected in shell_examples(text):
                if command.endswith("&"):
                    background.append(subprocess.Popen(["bash", "-c", command[:-1]], cwd=checkout, env=env,
                                                       stdout=subprocess.DEVNULL, start_new_session=True))
                    time.sleep(3.0)  # as a reader would wait before the next command
                    continue
                done = subprocess.run(["bash", "-c", command], cwd=checkout, env=env, capture_output=True,
                                      text=True, timeout=COMMAND_TIMEOUT)
                output = done.stdout.strip()
                results.append({"section": title, "command": command, "expected": expected,
                                "output": output, "stderr": done.stderr, "returncode": done.returncode,
                                "ok": bool(expected_pattern(expected).fullmatch(output))})
    finally:
        for proc in [*background, stack]:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # the group this script started
        for proc in [*background, stack]:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()
    print(json.dumps({"results": results, "stack_exit": stack.returncode,
                      "stack_log": (checkout / "stack.log").read_text(errors="replace")}))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
