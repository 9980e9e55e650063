"""Endpoint loading and dispatch through oslo.messaging's real RPCDispatcher / RPCServer."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import textwrap
import uuid
from pathlib import Path

import oslo_messaging
import pytest
from oslo_config import cfg
from oslo_messaging.rpc import dispatcher as rpc_dispatcher

import sbusr
from sbusr import dispatch, opts
from sbusr.dispatch import adapter as adapter_module
from sbusr.dispatch import legacy as legacy_module
from sbusr.endpoints import system
from sbusr.jsonrpc.errors import (
    CALL_TIMEOUT,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    SERVER_ERROR,
    CallTimeout,
    error_from_exception,
)
from sbusr.jsonrpc.protocol import POSITIONAL_KEY, Call, oslo_message

FIXTURES = Path(__file__).parent / "fixtures"
ENDPOINT_DIR = FIXTURES / "endpoints"
LEGACY_ROOT = FIXTURES / "legacy"


def make_conf(directories=(), modules=(), legacy=(), entry_points=False) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], project="sbusr-test", default_config_files=[])
    conf.set_override("directories", [str(d) for d in directories], "endpoints")
    conf.set_override("modules", list(modules), "endpoints")
    conf.set_override("legacy_packages", list(legacy), "endpoints")
    conf.set_override("entry_points", entry_points, "endpoints")
    return conf


class Incoming:
    """The parts of an oslo IncomingMessage that RPCDispatcher.dispatch reads."""

    client_timeout = None

    def __init__(self, method: str, params):
        self.ctxt = {"request_id": "r1", "source": {"unit": 0, "client": 1, "type": 2}}
        self.message = oslo_message(Call("r1", False, method, params))


def rpc(registry: dispatch.Registry, method: str, params=(), policy=dispatch.AccessPolicy):
    """Dispatch like the server does; returns ('result', value) or ('error', code, message, data)."""
    dispatcher = rpc_dispatcher.RPCDispatcher(registry.adapters, None, access_policy=policy)
    try:
        return ("result", dispatcher.dispatch(Incoming(method, list(params) if isinstance(params, tuple)
                                                      else params)))
    except Exception as exc:
        return ("error", *error_from_exception(exc))


def code_of(outcome) -> int | None:
    return outcome[1] if outcome[0] == "error" else None


@pytest.fixture(scope="module")
def dir_registry():
    return dispatch.load_endpoints(make_conf(directories=[ENDPOINT_DIR]))


@pytest.fixture
def legacy_path(monkeypatch):
    monkeypatch.syspath_prepend(str(LEGACY_ROOT))
    yield
    legacy_module.purge_package("methods")


@pytest.fixture
def legacy_registry(legacy_path):
    return dispatch.load_endpoints(make_conf(legacy=["methods"]))


# --------------------------------------------------------------------------- directory endpoints

def test_positional_and_named_params(dir_registry):
    assert rpc(dir_registry, "add", [1, 2]) == ("result", 3)
    assert rpc(dir_registry, "add", {"a": "x", "b": "y"}) == ("result", "xy")
    assert rpc(dir_registry, "total", [1, 2, 3]) == ("result", 6)
    assert rpc(dir_registry, "total", {"start": 10}) == ("result", 10)


def test_namespaced_method_with_defaults_and_keyword_only(dir_registry):
    assert rpc(dir_registry, "weather.sk", ["101010100"]) == (
        "result", {"weatherinfo": {"cityid": "101010100", "city": "北京"}})
    assert rpc(dir_registry, "weather.forecast", {"code": "1", "unit": "F"}) == (
        "result", {"cityid": "1", "days": 3, "unit": "F"})
    assert rpc(dir_registry, "weather.forecast", ["1", 5]) == (
        "result", {"cityid": "1", "days": 5, "unit": "C"})


def test_ctxt_reaches_the_method(dir_registry):
    outcome = rpc(dir_registry, "whoami", [])
    assert outcome[1]["request_id"] == "r1" and outcome[1]["source"]["client"] == 1


def test_classmethod_and_staticmethod_are_served(dir_registry):
    assert rpc(dir_registry, "kind", []) == ("result", "Calc")
    assert rpc(dir_registry, "square", [7]) == ("result", 49)


def test_registry_lists_only_real_methods(dir_registry):
    methods = dir_registry.methods()
    assert methods == sorted(["add", "total", "whoami", "fail", "kind", "square", "only_here",
                              "weather.sk", "weather.forecast"])
    assert dir_registry.errors == []


@pytest.mark.parametrize("method", [
    "_private", "__init__", "__class__", "__dict__", "limit", "system", "module", "shadow", "prop", "Inner",
    "double", "call", "cwd", "nocontext", "target", "endpoint", "origin", "invoker", "no_such_method",
    "weather._private", "weather.os", "foo.os.system", "nope.add", "weather.sk.extra", "NotAnEndpoint.add",
])
def test_method_not_found(dir_registry, method):
    assert code_of(rpc(dir_registry, method, [])) == METHOD_NOT_FOUND


def test_private_and_attribute_names_are_refused_even_with_oslo_default_policy(dir_registry):
    for method in ("_private", "__class__", "limit", "system", "shadow", "prop", "double", "call"):
        outcome = rpc(dir_registry, method, [], policy=None)
        assert code_of(outcome) == METHOD_NOT_FOUND, (method, outcome)


@pytest.mark.parametrize("method, params", [
    ("add", [1]),
    ("add", [1, 2, 3]),
    ("add", {"a": 1, "c": 2}),
    ("add", {"a": 1, "b": 2, "ctxt": 3}),
    ("add", {"a": 1, "b": 2, "self": 3}),
    ("weather.forecast", ["1", 3, "F"]),
    ("square", []),
    ("whoami", [1]),
])
def test_invalid_params(dir_registry, method, params):
    outcome = rpc(dir_registry, method, params)
    assert code_of(outcome) == INVALID_PARAMS, outcome
    assert method.split(".")[-1] in outcome[2]


def test_positional_params_must_be_an_array(dir_registry):
    dispatcher = rpc_dispatcher.RPCDispatcher(dir_registry.adapters, None)
    incoming = Incoming("add", {})
    incoming.message["args"] = {POSITIONAL_KEY: 5}
    with pytest.raises(rpc_dispatcher.ExpectedException) as info:
        dispatcher.dispatch(incoming)
    assert error_from_exception(info.value)[0] == INVALID_PARAMS


def test_method_exception_is_server_error(dir_registry):
    outcome = rpc(dir_registry, "fail", ["kaputt"])
    assert outcome == ("error", SERVER_ERROR, "kaputt", {"type": "builtins.ValueError"})


def test_duplicates_reported_first_wins(caplog):
    with caplog.at_level(logging.WARNING, logger="sbusr.dispatch"):
        registry = dispatch.load_endpoints(make_conf(directories=[ENDPOINT_DIR]))
    assert [(d.name, d.kept.qualname, d.ignored.qualname) for d in registry.duplicates] == [
        ("add", "Calc", "Dupe")]
    assert any("add" in r.getMessage() and "calc.py" in r.getMessage() and "dupe.py" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    assert rpc(registry, "add", [1, 2]) == ("result", 3)
    assert rpc(registry, "only_here", []) == ("result", "dupe")


def test_origins_recorded_and_recreatable(dir_registry):
    origins = {a.origin.qualname: a.origin for a in dir_registry.adapters}
    weather = origins["Weather"]
    assert weather.kind == "file" and weather.module_or_path == str(ENDPOINT_DIR / "weather.py")
    adapter = dispatch.adapter_from_origin(weather)
    assert adapter.target.namespace == "weather"
    assert dispatch.adapter_methods(adapter) == ["forecast", "sk"]


# --------------------------------------------------------------------------- loading errors / reload

def write(path: Path, source: str) -> None:
    path.write_text(textwrap.dedent(source), encoding="utf-8")


ENDPOINT_TEMPLATE = """
    import oslo_messaging

    class Ep:
        target = oslo_messaging.Target(namespace="{ns}")

        def value(self, ctxt):
            return {value!r}
"""


def test_broken_files_are_skipped_and_others_load(tmp_path, caplog):
    write(tmp_path / "good.py", ENDPOINT_TEMPLATE.format(ns="good", value="ok"))
    write(tmp_path / "syntax.py", "def broken(:\n")
    write(tmp_path / "importerr.py", "import no_such_module_sbusr_test\n")
    write(tmp_path / "raises.py", "raise RuntimeError('at import')\n")
    write(tmp_path / "exits.py", "import sys\nsys.exit(3)\n")
    write(tmp_path / "ctor.py", """
        import oslo_messaging

        class Ctor:
            target = oslo_messaging.Target(namespace="ctor")

            def __init__(self):
                raise RuntimeError("constructor failed")

            def value(self, ctxt):
                return 1
    """)
    write(tmp_path / "_helper.py", "raise RuntimeError('private files are not loaded')\n")
    (tmp_path / "notes.txt").write_text("not python")
    with caplog.at_level(logging.ERROR, logger="sbusr.dispatch"):
        registry = dispatch.load_endpoints(make_conf(directories=[tmp_path, tmp_path / "missing"]))
    assert registry.methods() == ["good.value"]
    assert rpc(registry, "good.value") == ("result", "ok")
    failed = sorted(os.path.basename(e.source.split(":")[1] if e.source.startswith("file:") else e.source)
                    for e in registry.errors)
    assert failed == ["ctor.py", "exits.py", "importerr.py", "missing", "raises.py", "syntax.py"]
    assert any(r.exc_info for r in caplog.records)  # tracebacks are logged


def test_reload_picks_up_edited_added_and_removed_files(tmp_path):
    write(tmp_path / "ep.py", ENDPOINT_TEMPLATE.format(ns="ep", value="one"))
    write(tmp_path / "gone.py", ENDPOINT_TEMPLATE.format(ns="gone", value="x"))
    conf = make_conf(directories=[tmp_path])
    registry = dispatch.load_endpoints(conf)
    assert rpc(registry, "ep.value") == ("result", "one")
    old_module = type(registry.adapters[0].endpoint).__module__
    old_class = type(registry.adapters[0].endpoint)

    # same size, same second: the file must be re-read, not taken from a bytecode cache
    write(tmp_path / "ep.py", ENDPOINT_TEMPLATE.format(ns="ep", value="two"))
    write(tmp_path / "new.py", ENDPOINT_TEMPLATE.format(ns="new", value="fresh"))
    (tmp_path / "gone.py").unlink()
    reloaded = dispatch.reload(conf)
    assert rpc(reloaded, "ep.value") == ("result", "two")
    assert rpc(reloaded, "new.value") == ("result", "fresh")
    assert code_of(rpc(reloaded, "gone.value")) == METHOD_NOT_FOUND
    assert type(reloaded.adapters[0].endpoint) is not old_class
    assert type(reloaded.adapters[0].endpoint).__module__ == old_module  # stable module name
    assert rpc(registry, "ep.value") == ("result", "one")  # the old registry is untouched


def test_reload_of_named_module(tmp_path, monkeypatch):
    name = f"sbusr_test_mod_{uuid.uuid4().hex[:8]}"
    monkeypatch.syspath_prepend(str(tmp_path))
    write(tmp_path / f"{name}.py", ENDPOINT_TEMPLATE.format(ns="mod", value="v1"))
    try:
        conf = make_conf(modules=[name, "sbusr_no_such_module_xyz"])
        registry = dispatch.load_endpoints(conf)
        assert rpc(registry, "mod.value") == ("result", "v1")
        assert [e.source for e in registry.errors] == ["sbusr_no_such_module_xyz"]
        assert registry.adapters[0].origin == dispatch.EndpointOrigin("module", name, "Ep")
        write(tmp_path / f"{name}.py", ENDPOINT_TEMPLATE.format(ns="mod", value="version two"))
        reloaded = dispatch.reload(conf)
        assert rpc(reloaded, "mod.value") == ("result", "version two")
    finally:
        sys.modules.pop(name, None)


# --------------------------------------------------------------------------- legacy methods package

@pytest.mark.parametrize("method, params, expected", [
    ("add", [1, 2], 3),
    ("add", {"a": 1, "b": 2}, 3),
    ("echo", ["Hello"], "Hello"),
    ("plus", [1, 2, 3, 4], 10),
    ("plus", [], 0),
    ("greet", {"name": "sbusr"}, "hello sbusr"),
    ("greet", ["sbusr", "hi"], "hi sbusr"),
    ("weather.sk", ["101010100"], {"weatherinfo": {"cityid": "101010100"}}),
    ("mymodule.MyClass.mymethod", [], "MyClass"),
    ("mymodule.MyClass.smethod", [3, 4], 12),
    ("mymodule.MyClass.smethod", {"x": 3}, 3),
    ("mymodule.top", ["v"], ["top", "v"]),
    ("sub.deep.where", [], "methods.sub.deep"),
])
def test_legacy_package_served_unchanged(legacy_registry, method, params, expected):
    assert rpc(legacy_registry, method, params) == ("result", expected)


@pytest.mark.parametrize("method", [
    "_hidden", "sk", "join", "os.system", "os.getcwd", "mymodule.os.system",
    "mymodule.MyClass.instance_method", "mymodule.MyClass._private", "_private.secret", "mymodule.MyClass",
    "weather.requests", "sub.deep",
])
def test_legacy_unexposed_names(legacy_registry, method):
    assert code_of(rpc(legacy_registry, method, [])) == METHOD_NOT_FOUND


def test_legacy_invalid_params(legacy_registry):
    outcome = rpc(legacy_registry, "add", [1])
    assert code_of(outcome) == INVALID_PARAMS and "add" in outcome[2]
    assert code_of(rpc(legacy_registry, "mymodule.MyClass.mymethod", [1])) == INVALID_PARAMS


def test_legacy_registry_contents_and_origins(legacy_registry):
    assert legacy_registry.methods() == [
        "add", "echo", "greet", "mymodule.MyClass.mymethod", "mymodule.MyClass.smethod", "mymodule.top",
        "plus", "sub.deep.where", "weather.sk"]
    origins = {a.origin for a in legacy_registry.adapters}
    assert dispatch.EndpointOrigin("legacy", "methods", "mymodule.MyClass") in origins
    root = dispatch.adapter_from_origin(dispatch.EndpointOrigin("legacy", "methods", ""))
    assert dispatch.adapter_methods(root) == ["add", "echo", "greet", "plus"]


def test_legacy_reload(tmp_path, monkeypatch):
    name = f"legacy_{uuid.uuid4().hex[:8]}"
    shutil.copytree(LEGACY_ROOT / "methods", tmp_path / name)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        conf = make_conf(legacy=[name])
        registry = dispatch.load_endpoints(conf)
        assert rpc(registry, "weather.sk", ["1"]) == ("result", {"weatherinfo": {"cityid": "1"}})
        write(tmp_path / name / "weather.py",
              "def sk(code):\n    return 'changed ' + code\n\n\ndef extra():\n    return 'added'\n")
        reloaded = dispatch.reload(conf)
        assert rpc(reloaded, "weather.sk", ["1"]) == ("result", "changed 1")
        assert rpc(reloaded, "weather.extra") == ("result", "added")
    finally:
        legacy_module.purge_package(name)


def test_broken_legacy_submodule_is_skipped(tmp_path, monkeypatch):
    name = f"legacy_{uuid.uuid4().hex[:8]}"
    shutil.copytree(LEGACY_ROOT / "methods", tmp_path / name)
    write(tmp_path / name / "broken.py", "raise ImportError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        registry = dispatch.load_endpoints(make_conf(legacy=[name, "sbusr_no_such_legacy"]))
        assert rpc(registry, "add", [2, 3]) == ("result", 5)
        assert sorted(e.source for e in registry.errors) == [f"{name}.broken", "sbusr_no_such_legacy"]
    finally:
        legacy_module.purge_package(name)


# --------------------------------------------------------------------------- built-in endpoints

@pytest.fixture
def builtin_registry():
    registry = dispatch.load_endpoints(make_conf(entry_points=True))
    yield registry
    system.bind_registry(None)
    system.set_reload_handler(None)


def test_builtin_methods(builtin_registry):
    assert {a.origin.kind for a in builtin_registry.adapters} == {"builtin"}
    assert rpc(builtin_registry, "add", [1, 2]) == ("result", 3)
    assert rpc(builtin_registry, "echo", {"txt": "Hello"}) == ("result", "Hello")
    assert rpc(builtin_registry, "plus", [1, 2, 3.5]) == ("result", 6.5)
    assert rpc(builtin_registry, "sleep", [0]) == ("result", None)
    assert rpc(builtin_registry, "sleep", {"seconds": 0.01}) == ("result", None)


def test_the_system_endpoint_is_only_the_builtin_sys(builtin_registry, dir_registry):
    system_endpoints = [a for a in builtin_registry.adapters if dispatch.is_system_endpoint(a)]
    assert [a.target.namespace for a in system_endpoints] == ["sys", "rpc"]  # sys.* and rpc.discover
    assert not any(dispatch.is_system_endpoint(a) for a in dir_registry.adapters)


@pytest.mark.parametrize("seconds", [-1, "1", True, None, 1e9, float("nan")])
def test_builtin_sleep_validates(builtin_registry, seconds):
    assert code_of(rpc(builtin_registry, "sleep", [seconds])) == INVALID_PARAMS


def test_builtin_bad_operands_are_invalid_params(builtin_registry):
    assert code_of(rpc(builtin_registry, "add", [1, "x"])) == INVALID_PARAMS
    assert code_of(rpc(builtin_registry, "plus", [1, "x"])) == INVALID_PARAMS


def test_builtin_exception_and_warnlog(builtin_registry, caplog):
    assert rpc(builtin_registry, "exception", ["a", 1]) == (
        "error", SERVER_ERROR, "('a', 1)", {"type": "builtins.Exception"})
    assert rpc(builtin_registry, "exception", ["only"])[2] == "only"
    with caplog.at_level(logging.WARNING, logger="sbusr.endpoints.builtin"):
        assert rpc(builtin_registry, "warnlog", ["attention 注意"]) == ("result", None)
    logged = [r.getMessage() for r in caplog.records if r.name == "sbusr.endpoints.builtin"]
    assert logged == ["attention 注意"]


def test_sys_endpoint(builtin_registry):
    assert rpc(builtin_registry, "sys.ping") == ("result", "pong")
    assert rpc(builtin_registry, "sys.version") == ("result", sbusr.__version__)
    assert rpc(builtin_registry, "sys.methods")[:3] == (
        "error", SERVER_ERROR, "method list not available")
    system.bind_registry(builtin_registry)
    assert rpc(builtin_registry, "sys.methods") == ("result", [
        "add", "echo", "exception", "plus", "rpc.discover", "sbusr.timer.run", "sleep", "sys.methods",
        "sys.ping", "sys.reload", "sys.spool", "sys.stats", "sys.timers", "sys.version", "warnlog"])
    assert rpc(builtin_registry, "sys.reload")[:3] == ("error", SERVER_ERROR, "reload not available")
    system.set_reload_handler(lambda: builtin_registry.summary())
    outcome = rpc(builtin_registry, "sys.reload")
    assert outcome[0] == "result" and outcome[1]["methods"] == 15 and outcome[1]["errors"] == []
    assert rpc(builtin_registry, "sys.stats")[:3] == ("error", SERVER_ERROR,
                                                      "sys.stats is not available in this process")
    system.set_report("stats", lambda: {"mode": "test"})
    try:
        outcome = rpc(builtin_registry, "sys.stats")
    finally:
        system.set_report("stats", None)
    assert outcome == ("result", {"version": sbusr.__version__, "pid": os.getpid(), "mode": "test"})


# --------------------------------------------------------------------------- invoker hook

def test_invoker_hook_sees_every_call_and_can_fail_with_rpc_errors(dir_registry):
    registry = dispatch.load_endpoints(make_conf(directories=[ENDPOINT_DIR]))
    seen = []

    def invoker(fn, ctxt, args, kwargs):
        seen.append((fn.__name__, ctxt["request_id"], args, kwargs))
        if fn.__name__ == "whoami":
            raise CallTimeout("too slow")
        return fn(ctxt, *args, **kwargs)

    registry.set_invoker(invoker)
    assert rpc(registry, "weather.forecast", {"code": "9", "unit": "K"})[0] == "result"
    assert rpc(registry, "add", [1, 2]) == ("result", 3)
    assert rpc(registry, "whoami") == ("error", CALL_TIMEOUT, "too slow", None)
    assert seen[0] == ("forecast", "r1", ("9",), {"unit": "K"})
    assert seen[1] == ("add", "r1", (1, 2), {})
    assert rpc(dir_registry, "whoami")[0] == "result"  # other registries keep the default invoker


# --------------------------------------------------------------------------- real RPCServer, fake transport

def messaging_conf() -> cfg.ConfigOpts:
    """A ConfigOpts for the fake transport, with every option oslo.messaging reads registered.

    Separate from make_conf(): registering sbusr's opts and then calling get_rpc_transport on the same
    ConfigOpts currently fails with DuplicateOptError(transport_url). And oslo.messaging 18 registers
    its tracing/metrics options on the global cfg.CONF only while RPCServer reads them from the
    transport's conf, so register them on ours (what oslo's ConfFixture does; it needs 'fixtures').
    """
    from oslo_messaging._metrics import client as metrics
    from oslo_messaging._tracing import client as tracing

    conf = cfg.ConfigOpts()
    conf.register_opts(metrics.oslo_messaging_metrics, group="oslo_messaging_metrics")
    conf.register_opts(tracing.oslo_messaging_tracing, group="oslo_messaging_tracing")
    conf([], project="sbusr-test", default_config_files=[])
    return conf


def test_end_to_end_through_rpc_server(legacy_path):
    conf = make_conf(directories=[ENDPOINT_DIR], legacy=["methods"])
    registry = dispatch.load_endpoints(conf)
    transport = oslo_messaging.get_rpc_transport(messaging_conf(), url="fake:/")
    target = oslo_messaging.Target(topic="sbusr-test", server="s1")
    server = oslo_messaging.get_rpc_server(transport, target, registry.adapters,
                                           access_policy=dispatch.AccessPolicy)
    server.start()
    try:
        client = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target(topic="sbusr-test"),
                                               timeout=10)
        assert client.call({}, "add", **{POSITIONAL_KEY: [1, 2]}) == 3
        assert client.prepare(namespace="weather").call({}, "sk", code="7") == {
            "weatherinfo": {"cityid": "7", "city": "北京"}}
        legacy_class = client.prepare(namespace="mymodule.MyClass")
        assert legacy_class.call({}, "mymethod", **{POSITIONAL_KEY: []}) == "MyClass"
        with pytest.raises(Exception) as info:
            client.call({}, "add", **{POSITIONAL_KEY: [1]})
        assert error_from_exception(info.value)[0] == INVALID_PARAMS
        with pytest.raises(Exception) as info:
            client.prepare(namespace="foo.os").call({}, "system", **{POSITIONAL_KEY: ["true"]})
        assert error_from_exception(info.value)[0] == METHOD_NOT_FOUND
        with pytest.raises(Exception) as info:
            client.call({}, "limit")
        assert error_from_exception(info.value)[0] == METHOD_NOT_FOUND
    finally:
        server.stop()
        server.wait()
        transport.cleanup()


def _sig(src: str):
    namespace: dict = {}
    exec(src, namespace)  # a real function object with exactly this signature
    return adapter_module._params_signature(namespace["m"])


@pytest.mark.parametrize("src", [
    "def m(ctxt): pass",
    "def m(ctxt, a): pass",
    "def m(ctxt, a, b=1, c=2): pass",
    "def m(ctxt, a, /, b=1): pass",
])
def test_arity_shortcut_agrees_with_signature_binding(src):
    sig = _sig(src)
    fits = adapter_module._arity_check(sig)
    assert fits is not None
    for n in range(6):
        try:
            sig.bind(*range(n))
            binds = True
        except TypeError:
            binds = False
        assert fits(n) == binds, (src, n)


@pytest.mark.parametrize("src", [
    "def m(ctxt, *args): pass",
    "def m(ctxt, a, *, b): pass",
    "def m(ctxt, **kw): pass",
])
def test_arity_shortcut_leaves_other_shapes_to_signature_binding(src):
    assert adapter_module._arity_check(_sig(src)) is None
