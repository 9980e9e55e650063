"""What sbusr's programs load when they start: each start of a server, API, spooler or worker pays
for it, so a library sbusr never uses must not be loaded on the way (in a fresh interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = ("import json, os, sys; import sbusr.cmd.server; "
         "print(json.dumps([os.environ.get('EVENTLET_NO_GREENDNS'), 'dns.resolver' in sys.modules]))")


def _start(preset: str | None) -> list:
    env = {k: v for k, v in os.environ.items() if k != "EVENTLET_NO_GREENDNS"}
    if preset is not None:
        env["EVENTLET_NO_GREENDNS"] = preset
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_program_does_not_load_eventlets_green_dns():
    assert _start(None) == ["yes", False]


@pytest.mark.parametrize("preset", ["no", "yes"])
def test_the_operators_own_eventlet_dns_setting_wins(preset):
    assert _start(preset) == [preset, preset != "yes"]
