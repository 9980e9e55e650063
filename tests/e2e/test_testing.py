"""sbusr.testing: call() with no bus, the pytest plugin, and the README's "Testing your methods"."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import oslo_messaging
import pytest

from sbusr.testing import Methods, RpcError, call

ROOT = Path(__file__).resolve().parents[2]

ENDPOINT = textwrap.dedent('''
    import datetime
    import time

    import oslo_messaging

    from sbusr.decorators import RpcError, limits


    class Shop:
        target = oslo_messaging.Target(namespace="shop")

        def price(self, ctxt, item, quantity=1):
            return {"item": item, "total": 2.5 * quantity, "at": datetime.date(2026, 12, 1)}

        def refuse(self, ctxt):
            raise RpcError(4001, "out of stock", {"item": "tea"})

        def crash(self, ctxt):
            raise KeyError("nope")

        def caller(self, ctxt):
            return ctxt["source"]

        @limits(timeout=0.2)
        def slow(self, ctxt):
            time.sleep(0.5)
            return "late"

        def _private(self, ctxt):
            return "never"
''')


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "shop.py").write_text(ENDPOINT)
    return tmp_path


def test_result_is_the_decoded_json(folder):
    assert call(folder, "shop.price", ["tea", 2]) == {"item": "tea", "total": 5.0, "at": "2026-12-01"}
    assert call(str(folder), "shop.price", {"item": "tea"})["total"] == 2.5


@pytest.mark.parametrize("method, params, code", [
    ("shop.nosuch", [], -32601), ("shop._private", [], -32601), ("shop.target", [], -32601),
    ("shop.price", [], -32602), ("shop.price", {"colour": 1}, -32602), ("shop.crash", [], -32000),
    ("shop.refuse", [], 4001), ("shop.slow", [], -32001), ("shop.price", "tea", -32600),
])
def test_errors_carry_the_servers_code(folder, method, params, code):
    with pytest.raises(RpcError) as error:
        call(folder, method, params)
    assert error.value.code == code


def test_error_details_as_the_server_sends_them(folder):
    with pytest.raises(RpcError) as error:
        call(folder, "shop.refuse")
    assert (error.value.message, error.value.data) == ("out of stock", {"item": "tea"})
    with pytest.raises(RpcError) as error:
        call(folder, "shop.nosuch")
    assert error.value.message == "Method not found: shop.nosuch"
    with pytest.raises(RpcError) as error:
        call(folder, "shop.crash")
    assert error.value.data["type"] == "builtins.KeyError"


def test_module_names_objects_and_the_caller(folder, monkeypatch):
    monkeypatch.syspath_prepend(str(folder))
    assert call("shop", "shop.caller") == {"unit": 0, "client": 0, "type": 2}
    assert call("shop", "shop.caller", source={"unit": 3, "client": 1, "type": 2})["unit"] == 3

    class Counter:
        target = oslo_messaging.Target(namespace="counter")

        def __init__(self):
            self.n = 0

        def incr(self, ctxt):
            self.n += 1
            return self.n

    methods = Methods([Counter()])
    assert [methods.call("counter.incr") for _ in range(3)] == [1, 2, 3]
    assert methods.methods() == ["counter.incr"]


def test_a_broken_endpoint_file_is_an_import_error(tmp_path):
    (tmp_path / "bad.py").write_text("import no_such_module_anywhere\n")
    with pytest.raises(ImportError):
        call(tmp_path, "x")


def test_config_overrides_reach_the_execution_layer(folder):
    with pytest.raises(RpcError) as error:
        call(folder, "shop.slow", config={"execution": {"call_timeout": 5}})
    assert error.value.code == -32001  # the method's own limit (0.2 s) beats the configuration
    methods = Methods(folder, {"execution": {"call_timeout": 7}})
    assert methods.conf.execution.call_timeout == 7
    assert methods.call("shop.caller", request_id=7) == {"unit": 0, "client": 0, "type": 2}


def test_decorators_import_no_bus_driver_or_server():
    code = "import json, sys, sbusr.decorators; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = json.loads(done.stdout)
    light = ("sbusr.execution", "sbusr.execution.limits")  # @limits; the package's __init__ imports nothing
    heavy = [m for m in modules
             if m.split(".")[0] in ("oslo_messaging", "oslo_config", "tornado", "eventlet")
             or (m.startswith(("sbusr.smartbus", "sbusr.driver", "sbusr.transport", "sbusr.cmd",
                               "sbusr.server", "sbusr.execution", "sbusr.dispatch", "sbusr.timers.scheduler",
                               "sbusr.spooler.supervisor")) and m not in light)]
    assert heavy == []
    assert "sbusr.decorators" in modules


def test_the_plugin_is_registered_through_the_entry_point():
    from importlib.metadata import entry_points

    assert [e.value for e in entry_points(group="pytest11") if e.name == "sbusr"] == ["sbusr.testing.plugin"]


def test_spooled_jobs_can_be_checked_without_a_spooler(tmp_path):
    from sbusr.spooler import jobs
    from sbusr.testing import queued_jobs

    (tmp_path / "notify.py").write_text(textwrap.dedent('''
        import oslo_messaging
        from sbusr.decorators import spool

        @spool
        def mail(to):
            pass

        class Notify:
            target = oslo_messaging.Target(namespace="notify")

            def later(self, ctxt, to):
                return mail.spool(to=to)
    '''))
    try:
        job_id = call(tmp_path, "notify.later", ["ops@example.org"],
                      config={"spooler": {"directory": str(tmp_path / "spool")}})
    finally:
        jobs.configure(None)
    [job] = queued_jobs(tmp_path / "spool")
    assert (job["id"], job["kwargs"]) == (job_id, {"to": "ops@example.org"})
    assert job["task"].endswith(".mail")


def test_the_date_encoding_is_the_servers(folder):
    assert call(folder, "shop.price", ["x"])["at"] == datetime.date(2026, 12, 1).isoformat()


# ---------------------------------------------------------------------------- the README section


def readme_blocks() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Testing your methods", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n# (\S+)\n(.*?)```", section, re.S)
    assert len(blocks) == 3, "README's Testing section should show the call(), Methods and fixture examples"
    return dict(blocks)


def readme_first_endpoint() -> str:
    text = (ROOT / "README.md").read_text()
    return re.search(r"```python\n# methods/weather.py\n(.*?)```", text, re.S).group(1)


def test_readme_testing_section_runs_as_written(tmp_path):
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "weather.py").write_text(readme_first_endpoint())
    text = (ROOT / "README.md").read_text()
    for name in ("housekeeping", "sms"):  # what the Methods example runs
        code = re.search(rf"```python\n# methods/{name}.py\n(.*?)```", text, re.S).group(1)
        (tmp_path / "methods" / f"{name}.py").write_text(code)
    for path, code in readme_blocks().items():
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(code)
    env = dict(os.environ, SMS_GATEWAY_URL="http://127.0.0.1:9/send")  # the discard port: nothing listens
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "5 passed" in done.stdout


def test_start_api_returns_an_api_that_already_lists_the_ipsc_stand_in(tmp_path, on_session_bus):
    """A newcomer hears of the clients already on the bus from their replies, which may trail the
    API's ready event; the kit's start_api returns only when the stand-in is listed."""
    from sbusr.testing import Stack

    with Stack([], {}, workdir=tmp_path, **on_session_bus) as stack:
        for token in ("", "s3cret"):
            api = stack.start_api(**({"auth_token": token} if token else {}))
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            listed = api.request("GET", "/api/ipsc", headers=headers).json()["ipsc"]
            assert (stack.ipsc_unit, stack.ipsc_process) in {(p["unit"], p["client"]) for p in listed}
            response = api.start_flow("Project1", "Flow1", ["Hello"], wait=True, headers=headers)
            assert response.status == 200, response.body
            assert response.json()["result"] == ["ok"]
