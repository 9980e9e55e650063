"""Mode parity: loading (folders, modules, entry points, legacy packages, duplicates, load errors) and
reloading (SIGHUP, ``sys.reload``, ``/sys/reset``) through a real bus, in thread and process mode,
with the same assertions."""

from __future__ import annotations

import json
import os
import signal
import textwrap

import pytest

from sbusr.testing import Stack
from sbusr.testing.waiting import wait_for

CLASS_ENDPOINT = textwrap.dedent('''
    import oslo_messaging


    class Geo:
        target = oslo_messaging.Target(namespace="geo")

        def where(self, ctxt, city):
            return {{"city": city, "version": {version!r}}}
''')

MODULE_ENDPOINT = textwrap.dedent('''
    import oslo_messaging


    class Mod:
        target = oslo_messaging.Target(namespace="mod")

        def name(self, ctxt):
            return __name__
''')

LEGACY_INIT = textwrap.dedent('''
    def mul(a, b):
        return a * b
''')

LEGACY_SUB = textwrap.dedent('''
    class Shapes:
        @staticmethod
        def area(w, h):
            return w * h
''')

DUPLICATE_ECHO = textwrap.dedent('''
    import oslo_messaging


    class Mine:
        target = oslo_messaging.Target()

        def echo(self, ctxt, text):
            return "mine: " + text
''')

LIMITED = textwrap.dedent('''
    import time

    import oslo_messaging

    from sbusr.decorators import limits


    @limits(timeout=0.5)
    class Lim:
        target = oslo_messaging.Target(namespace="lim")

        def by_class(self, ctxt, seconds):
            time.sleep(seconds)
            return "done"

        @limits(timeout=0)
        def unlimited(self, ctxt, seconds):
            time.sleep(seconds)
            return "done"


    class Plain:
        target = oslo_messaging.Target(namespace="plain")

        def by_config(self, ctxt, seconds):
            time.sleep(seconds)
            return "done"

        @limits(timeout=0.5)
        def by_method(self, ctxt, seconds):
            time.sleep(seconds)
            return "done"
''')

MODES = ["thread", "process"]


def lines_with(log: str, *needles: str) -> list[str]:
    return [line for line in log.splitlines() if all(n in line for n in needles)]


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """A methods folder (a class endpoint and a file that does not import), an importable module and
    an original-sbusr style legacy package on PYTHONPATH (inherited by the server and its workers)."""
    methods, lib = tmp_path / "methods", tmp_path / "lib"
    methods.mkdir()
    (methods / "geo.py").write_text(CLASS_ENDPOINT.format(version="v1"))
    (methods / "broken.py").write_text("import no_such_module_for_parity\n")
    (lib / "oldmethods").mkdir(parents=True)
    (lib / "oldmethods" / "__init__.py").write_text(LEGACY_INIT)
    (lib / "oldmethods" / "shapes.py").write_text(LEGACY_SUB)
    (lib / "parity_mod.py").write_text(MODULE_ENDPOINT)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(lib), os.environ.get("PYTHONPATH")])))
    return methods


@pytest.mark.parametrize("mode", MODES)
def test_loading_serves_every_source_and_reports_a_load_error_once(tmp_path, layout, mode, on_session_bus):
    config = {"endpoints": {"modules": "parity_mod", "legacy_packages": "oldmethods"},
              "execution": {"mode": mode, "workers": 2}}
    with Stack([layout], config, workdir=tmp_path, **on_session_bus) as stack:
        call = stack.ipsc.call
        assert call("geo.where", ["bj"])["result"] == {"city": "bj", "version": "v1"}  # folder
        assert call("mod.name")["result"] == "parity_mod"  # [endpoints] modules
        assert call("mul", [6, 7])["result"] == 42  # legacy package
        assert call("shapes.Shapes.area", {"w": 2, "h": 3})["result"] == 6
        assert call("echo", ["hi"])["result"] == "hi"  # entry points (the built-ins)
        assert call("sys.ping")["result"] == "pong"
        methods = call("sys.methods")["result"]
        assert {"geo.where", "mod.name", "mul", "shapes.Shapes.area", "echo"} <= set(methods)
        missing = call("broken.anything")
        assert missing["error"]["code"] == -32601
        log = stack.server.output()
        errors = lines_with(log, " ERROR ", "Cannot load endpoint file")
        assert len(errors) == 1, errors
        assert "no_such_module_for_parity" in log
        assert lines_with(log, "serving", "methods")


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_a_duplicate_of_a_builtin_is_one_warning_and_the_first_loaded_wins(tmp_path, mode, on_session_bus):
    methods = tmp_path / "methods"
    methods.mkdir()
    (methods / "mine.py").write_text(DUPLICATE_ECHO)
    config = {"execution": {"mode": mode, "workers": 2}}
    with Stack([methods], config, workdir=tmp_path, **on_session_bus) as stack:
        assert stack.ipsc.call("echo", ["hi"])["result"] == "mine: hi"  # folders load before entry points
        assert stack.ipsc.call("sys.ping")["result"] == "pong"
        warnings = lines_with(stack.server.output(), " WARNING ", "echo")
        assert len(warnings) == 1, warnings


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_the_reload_answer_names_the_duplicates(tmp_path, mode, on_session_bus):
    methods = tmp_path / "methods"
    methods.mkdir()
    (methods / "mine.py").write_text(DUPLICATE_ECHO)
    with Stack([methods], {"execution": {"mode": mode, "workers": 2}}, workdir=tmp_path,
               **on_session_bus) as stack:
        answer = stack.ipsc.call("sys.reload")
        assert "echo" in json.dumps(answer["result"]["duplicates"]), answer


@pytest.mark.parametrize("mode", MODES)
def test_sighup_sys_reload_and_sys_reset_reload_the_same_way(tmp_path, layout, mode, on_session_bus):
    source = layout / "geo.py"
    (layout / "broken.py").unlink()
    config = {"execution": {"mode": mode, "workers": 2}}
    with Stack([layout], config, workdir=tmp_path, **on_session_bus) as stack:
        call = stack.ipsc.call
        assert call("geo.where", ["x"])["result"]["version"] == "v1"

        source.write_text(CLASS_ENDPOINT.format(version="v2"))
        mark = len(stack.server.output())
        stack.server.signal(signal.SIGHUP)
        wait_for(lambda: "reloaded endpoints" in stack.server.output()[mark:], "the SIGHUP reload")
        assert call("geo.where", ["x"])["result"]["version"] == "v2"

        source.write_text(CLASS_ENDPOINT.format(version="v3"))
        answer = call("sys.reload")["result"]
        assert "geo.where" in answer["methods"] and answer["duplicates"] == []
        assert answer["config"]["needs_restart"] == {}
        assert call("geo.where", ["x"])["result"]["version"] == "v3"

        source.write_text(CLASS_ENDPOINT.format(version="v4"))
        api = stack.start_api()
        reply = api.request("POST", "/sys/reset")
        assert reply.status == 200, reply.body
        body = json.loads(reply.body)
        assert "geo.where" in json.dumps(body["reloaded"])
        assert call("geo.where", ["x"])["result"]["version"] == "v4"
        assert "Traceback" not in stack.server.output()


@pytest.mark.parametrize("mode", MODES)
def test_time_limits_of_config_class_and_method_give_the_same_answers(tmp_path, mode, on_session_bus):
    methods = tmp_path / "methods"
    methods.mkdir()
    (methods / "lim.py").write_text(LIMITED)
    config = {"execution": {"mode": mode, "workers": 2, "call_timeout": 1.5}}
    with Stack([methods], config, workdir=tmp_path, **on_session_bus) as stack:
        call = stack.ipsc.call
        for method, limit in [("plain.by_config", 1.5), ("plain.by_method", 0.5), ("lim.by_class", 0.5)]:
            reply = call(method, [5], timeout=60)
            assert reply["error"]["code"] == -32001, reply
            assert reply["error"]["data"] == {"timeout": limit}, reply
            assert f"within {limit:g} s" in reply["error"]["message"], reply
        assert call("lim.unlimited", [2], timeout=60)["result"] == "done"  # 0 = no limit, beats the class
        assert call("plain.by_method", [0], timeout=60)["result"] == "done"
        assert call("sys.ping")["result"] == "pong"  # and the server goes on serving
