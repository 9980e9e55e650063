"""The method contract: async def, results JSON cannot carry, exact decimals, typed params, the call
context, discovery -- end to end through a real bus in both execution modes, and through sbusr.testing."""

from __future__ import annotations

import decimal
import itertools
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sbusr import testing
from sbusr.jsonrpc.encoding import dumps
from sbusr.jsonrpc.errors import CALL_TIMEOUT, INTERNAL_ERROR, INVALID_PARAMS, SERVER_ERROR, RpcError
from sbusr.jsonrpc.protocol import result_response
from sbusr.smartbus import codec
from sbusr.testing.api_process import ApiProcess
from sbusr.testing.ipsc import FakeIpsc
from sbusr.testing.processes import BusProcess
from sbusr.testing.waiting import wait_for
from tests.helpers.server import SERVER_UNIT, ServerProcess, write_config

WAIT = 20.0

#: importable by the server (PYTHONPATH): the async worker_init and a legacy package
HOOK = textwrap.dedent('''
    import asyncio

    SESSION = {}


    async def open_session():
        """Stands in for an httpx/aiohttp client: bound to the loop it was made on."""
        SESSION["loop"] = asyncio.get_running_loop()
        SESSION["lock"] = asyncio.Lock()
''')

LEGACY = textwrap.dedent('''
    import asyncio


    async def double(x):
        await asyncio.sleep(0)
        return 2 * x


    class Tools:
        @staticmethod
        async def triple(x):
            return 3 * x
''')

ENDPOINT = textwrap.dedent('''
    import asyncio
    import dataclasses
    import decimal
    import logging
    import os
    import time

    import oslo_messaging
    import pydantic

    from sbusr.execution.limits import limits

    import contract_hook

    LOG = logging.getLogger("contract.methods")


    class Contract:
        target = oslo_messaging.Target(namespace="contract")

        async def slow_add(self, ctxt, a, b):
            await asyncio.sleep(0.01)
            return a + b

        @classmethod
        async def cls_name(cls, ctxt):
            return cls.__name__

        @staticmethod
        async def static_echo(ctxt, text):
            return text

        async def session(self, ctxt):
            """Uses the loop-bound session opened by the async worker_init."""
            async with contract_hook.SESSION["lock"]:
                return contract_hook.SESSION["loop"] is asyncio.get_running_loop()

        async def fails(self, ctxt):
            raise ValueError("async boom")

        @limits(timeout=1)
        async def overrun(self, ctxt, marker):
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                with open(marker, "w") as f:
                    f.write("cancelled")
                raise
            return "woke"

        def gen(self, ctxt):
            yield 1

        def thing(self, ctxt):
            return object()

        def nan(self, ctxt):
            return float("nan")

        def money(self, ctxt):
            return {"one": decimal.Decimal("1.00"), "balance": decimal.Decimal("12345678901234567.89"),
                    "debt": decimal.Decimal("-12.00")}

        def bad_money(self, ctxt):
            return decimal.Decimal("Infinity")


    class Order(pydantic.BaseModel):
        item: str
        amount: decimal.Decimal


    @dataclasses.dataclass
    class Point:
        x: int
        y: int


    class Typed:
        target = oslo_messaging.Target(namespace="typed")

        def twice(self, ctxt, n: int) -> int:
            """Double a number.

            The whole number comes back multiplied by two.
            """
            return 2 * n

        def total(self, ctxt, order: Order, copies: int = 1) -> Order:
            return Order(item=order.item, amount=order.amount * copies)

        def move(self, ctxt, p: Point, dx: int) -> Point:
            return Point(p.x + dx, p.y)

        async def later(self, ctxt, when: float, tags: list[str] | None = None) -> dict:
            return {"when": when, "tags": tags}

        def untyped(self, ctxt, a, b=2):
            return [a, b]


    class Ctx:
        target = oslo_messaging.Target(namespace="ctx")

        def info(self, ctxt, note):
            LOG.info("sync call noted %s", note)
            return describe(ctxt)

        async def ainfo(self, ctxt, note):
            await asyncio.sleep(0)
            LOG.info("async call noted %s", note)
            return describe(ctxt)

        @limits(timeout=0)
        def unlimited(self, ctxt):
            return [ctxt.deadline, ctxt.time_left()]


    def describe(ctxt):
        from oslo_context.context import RequestContext

        return {"dict": [ctxt["request_id"], ctxt["source"]], "method": ctxt.method,
                "request_id": ctxt.request_id, "caller": list(ctxt.caller), "left": ctxt.time_left(),
                "deadline_in": ctxt.deadline - time.time(), "oslo": isinstance(ctxt, RequestContext)}
''')

_ids = itertools.count(1)


@pytest.fixture(scope="module")
def bus():
    with BusProcess() as bus:
        yield bus


@pytest.fixture(scope="module")
def ipsc(bus):
    with FakeIpsc(bus.host, bus.port, unit=0, process=6) as fake:
        yield fake


@pytest.fixture(scope="module", params=["thread", "process"])
def mode(request):
    return request.param


@pytest.fixture(scope="module")
def served(bus, ipsc, mode, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"contract-{mode}")
    lib = tmp_path_factory.mktemp(f"contract-lib-{mode}")
    (folder / "contract.py").write_text(ENDPOINT)
    (lib / "contract_hook.py").write_text(HOOK)
    (lib / "contract_legacy").mkdir()
    (lib / "contract_legacy" / "__init__.py").write_text(LEGACY)
    client = 21 if mode == "thread" else 22
    conf = write_config(folder / "sbusr.conf", bus.port, {
        "endpoints": {"directories": [folder], "legacy_packages": ["contract_legacy"], "entry_points": True},
        "execution": {"mode": mode, "workers": 2, "worker_init": "contract_hook:open_session"}},
        client=client)
    pythonpath = os.pathsep.join(filter(None, [str(lib), os.environ.get("PYTHONPATH")]))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", pythonpath)
        proc = ServerProcess(conf).start()
    try:
        yield proc, client
    finally:
        proc.stop()


def call(ipsc, served, method, params=None, **options):
    _proc, client = served
    request = {"jsonrpc": "2.0", "id": f"c{next(_ids)}", "method": method, "params": params or []}
    return ipsc.call_rpc(SERVER_UNIT, client, request, timeout=WAIT, **options)


# --------------------------------------------------------------------------- async def


def test_async_methods_are_awaited(ipsc, served):
    assert call(ipsc, served, "contract.slow_add", [2, 3])["result"] == 5
    assert call(ipsc, served, "contract.slow_add", {"a": "x", "b": "y"})["result"] == "xy"
    assert call(ipsc, served, "contract.cls_name")["result"] == "Contract"
    assert call(ipsc, served, "contract.static_echo", ["hi"])["result"] == "hi"


def test_async_legacy_functions_are_awaited(ipsc, served):
    assert call(ipsc, served, "double", [21])["result"] == 42
    assert call(ipsc, served, "Tools.triple", [5])["result"] == 15


def test_async_worker_init_session_is_reused_by_every_call(ipsc, served):
    for _ in range(4):
        assert call(ipsc, served, "contract.session")["result"] is True


def test_async_method_exception_is_a_server_error(ipsc, served):
    error = call(ipsc, served, "contract.fails")["error"]
    assert error["code"] == SERVER_ERROR
    assert error["message"] == "async boom"


def test_async_method_over_its_limit_gets_call_timeout(ipsc, served, mode, tmp_path):
    marker = tmp_path / "cancelled"
    error = call(ipsc, served, "contract.overrun", [str(marker)])["error"]
    assert error["code"] == CALL_TIMEOUT
    if mode == "thread":  # the task is cancelled (process mode stops the worker instead)
        wait_for(marker.exists, "the overrunning task was cancelled", WAIT)
    assert call(ipsc, served, "contract.slow_add", [1, 1])["result"] == 2  # and the server goes on


# --------------------------------------------------------------------------- results and exact numbers


@pytest.mark.parametrize("method, message", [
    ("contract.gen", "result of type generator is not JSON"),
    ("contract.thing", "result of type object is not JSON"),
    ("contract.nan", "result contains the number nan, which JSON cannot carry"),
    ("contract.bad_money", "result contains the Decimal Infinity, which JSON cannot carry"),
])
def test_results_json_cannot_carry_are_internal_errors(ipsc, served, method, message):
    error = call(ipsc, served, method)["error"]
    assert error == {"code": INTERNAL_ERROR, "message": message}


def test_decimals_arrive_with_exactly_their_digits(ipsc, served):
    result = call(ipsc, served, "contract.money", parse_float=decimal.Decimal)["result"]
    assert {k: str(v) for k, v in result.items()} == {
        "one": "1.00", "balance": "12345678901234567.89", "debt": "-12.00"}


# --------------------------------------------------------------------------- typed params


def test_typed_params_are_validated_and_converted(ipsc, served):
    assert call(ipsc, served, "typed.twice", {"n": 21})["result"] == 42
    assert call(ipsc, served, "typed.twice", ["21"])["result"] == 42  # pydantic's lax mode
    assert call(ipsc, served, "typed.later", [1.5, ["a"]])["result"] == {"when": 1.5, "tags": ["a"]}
    assert call(ipsc, served, "typed.untyped", ["x"])["result"] == ["x", 2]


@pytest.mark.parametrize("method, params, param, expected", [
    ("typed.twice", {"n": "abc"}, "n", "int"),
    ("typed.twice", [1.5], "n", "int"),
    ("typed.total", {"order": {"item": "tea"}}, "order", "Order"),
    ("typed.total", [{"item": "tea", "amount": "1.00"}, "many"], "copies", "int"),
    ("typed.move", [{"x": 1, "y": "north"}, 1], "p", "Point"),
    ("typed.later", ["soon"], "when", "float"),
    ("typed.later", [1, [1]], "tags", "list[str] | None"),
])
def test_wrong_type_is_invalid_params_naming_param_and_type(ipsc, served, method, params, param, expected):
    error = call(ipsc, served, method, params)["error"]
    assert error["code"] == INVALID_PARAMS
    assert f"parameter {param!r} must be {expected}" in error["message"], error
    assert (error["data"]["param"], error["data"]["expected"]) == (param, expected)


def test_models_and_dataclasses_are_params_and_results(ipsc, served):
    reply = call(ipsc, served, "typed.total", [{"item": "tea", "amount": "1.25"}, 2],
                 parse_float=decimal.Decimal)
    assert reply["result"] == {"item": "tea", "amount": decimal.Decimal("2.50")}
    assert call(ipsc, served, "typed.move", {"p": {"x": 1, "y": 2}, "dx": 3})["result"] == {"x": 4, "y": 2}


def test_testing_call_validates_typed_params(tmp_path):
    folder = _endpoint_dir(tmp_path)
    assert testing.call(folder, "typed.move", [{"x": 1, "y": 2}, 3]) == {"x": 4, "y": 2}
    with pytest.raises(RpcError) as caught:
        testing.call(folder, "typed.twice", {"n": "abc"})
    assert caught.value.code == INVALID_PARAMS
    assert "parameter 'n' must be int" in caught.value.message


# --------------------------------------------------------------------------- the call context


@pytest.mark.parametrize("method", ["ctx.info", "ctx.ainfo"])
def test_context_is_the_dict_and_knows_method_caller_and_deadline(ipsc, served, method):
    _proc, client = served
    rid = f"ctx-{next(_ids)}"
    reply = ipsc.call_rpc(SERVER_UNIT, client, {"jsonrpc": "2.0", "id": rid, "method": method,
                                                 "params": ["n"]}, timeout=WAIT)
    result = reply["result"]
    caller = {"unit": 0, "client": 6, "type": codec.CLIENT_TYPE_IPSC}
    assert result["dict"] == [rid, caller]
    assert (result["method"], result["request_id"], result["oslo"]) == (method, rid, True)
    assert result["caller"] == [0, 6, caller["type"]]
    assert 0 < result["left"] <= 30.0 and 0 < result["deadline_in"] <= 30.0  # [execution] call_timeout


def test_context_without_a_limit_has_no_deadline(ipsc, served):
    assert call(ipsc, served, "ctx.unlimited")["result"] == [None, None]


@pytest.mark.parametrize("method, what", [("ctx.info", "sync"), ("ctx.ainfo", "async")])
def test_lines_logged_during_a_call_carry_its_request_id(ipsc, served, method, what):
    proc, client = served
    rid = f"log-{next(_ids)}"
    note = f"note-{rid}"
    ipsc.call_rpc(SERVER_UNIT, client, {"jsonrpc": "2.0", "id": rid, "method": method, "params": [note]},
                  timeout=WAIT)
    line = wait_for(lambda: [ln for ln in proc.output().splitlines() if f"call noted {note}" in ln],
                    "the method's log line", WAIT)[0]
    assert f" contract.methods [{rid}] {what} call noted" in line, line


def test_testing_call_passes_the_context(tmp_path):
    folder = _endpoint_dir(tmp_path)
    result = testing.call(folder, "ctx.ainfo", ["n"], request_id=7,
                          source={"unit": 1, "client": 2, "type": 2})
    assert result["dict"] == [7, {"unit": 1, "client": 2, "type": 2}]
    assert (result["method"], result["request_id"], result["caller"]) == ("ctx.ainfo", 7, [1, 2, 2])
    assert 0 < result["left"] <= 30.0


# --------------------------------------------------------------------------- discovery


def check_openrpc(doc: dict) -> None:
    """What every document describing the contract endpoints says, wherever it comes from."""
    assert doc["openrpc"].startswith("1.") and doc["info"]["title"] == "sbusr"
    methods = {m["name"]: m for m in doc["methods"]}
    assert [m["name"] for m in doc["methods"]] == sorted(methods)
    assert methods["typed.twice"] == {
        "name": "typed.twice", "summary": "Double a number.",
        "description": "The whole number comes back multiplied by two.",
        "params": [{"name": "n", "required": True, "schema": {"type": "integer"}}],
        "result": {"name": "result", "schema": {"type": "integer"}}}
    total = methods["typed.total"]
    assert total["params"] == [
        {"name": "order", "required": True, "schema": {"$ref": "#/components/schemas/Order"}},
        {"name": "copies", "required": False, "schema": {"type": "integer"}}]
    assert total["result"]["schema"] == {"$ref": "#/components/schemas/Order"}
    assert set(doc["components"]["schemas"]["Order"]["properties"]) == {"item", "amount"}
    assert methods["contract.slow_add"]["params"] == [{"name": "a", "required": True, "schema": {}},
                                                      {"name": "b", "required": True, "schema": {}}]
    assert methods["contract.slow_add"]["result"] == {"name": "result", "schema": {}}
    assert methods["contract.session"]["summary"] == (
        "Uses the loop-bound session opened by the async worker_init.")


def test_rpc_discover_describes_every_method_served(ipsc, served):
    doc = call(ipsc, served, "rpc.discover")["result"]
    check_openrpc(doc)
    names = [m["name"] for m in doc["methods"]]
    assert {"double", "Tools.triple", "sys.methods", "rpc.discover", "echo"} <= set(names)
    assert names == call(ipsc, served, "sys.methods")["result"]  # sys.methods is unchanged


def test_api_serves_the_servers_openrpc_document(bus, ipsc, served, mode, tmp_path):
    _proc, client = served
    api = ApiProcess(tmp_path, bus.port, client_id=31 if mode == "thread" else 32,
                     api={"server_client_id": client, "auth_token": "s3cret"})
    with api:
        assert api.request("GET", "/api/methods").status == 401
        response = api.request("GET", "/api/methods", headers={"Authorization": "Bearer s3cret"})
        assert response.status == 200, response.body
        assert response.json() == call(ipsc, served, "rpc.discover")["result"]
        check_openrpc(response.json())


def test_status_page_links_to_the_methods(bus, served, mode, tmp_path):
    _proc, client = served
    with ApiProcess(tmp_path, bus.port, client_id=33 if mode == "thread" else 34,
                    api={"server_client_id": client}) as api:
        page = api.request("GET", "/status").body.decode()
        assert 'href="status/methods"' in page
        check_openrpc(api.request("GET", "/status/methods").json())


def test_testing_discovers_the_methods(tmp_path):
    folder = _endpoint_dir(tmp_path)
    check_openrpc(testing.call(folder, "rpc.discover"))
    assert testing.Methods(folder).discover() == testing.call(folder, "rpc.discover")


def _endpoint_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ep"
    folder.mkdir()
    (folder / "contract.py").write_text(ENDPOINT.replace("import contract_hook\n", ""))
    return folder


def test_testing_call_awaits_async_and_keeps_decimals(tmp_path):
    folder = _endpoint_dir(tmp_path)
    assert testing.call(folder, "contract.slow_add", [2, 3]) == 5
    assert testing.call(folder, "contract.static_echo", {"text": "t"}) == "t"
    money = testing.call(folder, "contract.money", parse_float=decimal.Decimal)
    assert str(money["one"]) == "1.00" and str(money["balance"]) == "12345678901234567.89"
    as_text = testing.call(folder, "contract.money", config={"server": {"decimal_as": "string"}})
    assert as_text == {"one": "1.00", "balance": "12345678901234567.89", "debt": "-12.00"}
    with pytest.raises(RpcError) as caught:
        testing.call(folder, "contract.gen")
    assert (caught.value.code, caught.value.message) == (INTERNAL_ERROR,
                                                         "result of type generator is not JSON")


def test_testing_call_async_limit_is_call_timeout(tmp_path):
    folder = _endpoint_dir(tmp_path)
    marker = tmp_path / "cancelled"
    with pytest.raises(RpcError) as caught:
        testing.call(folder, "contract.overrun", [str(marker)])
    assert caught.value.code == CALL_TIMEOUT
    wait_for(marker.exists, "the overrunning task was cancelled", WAIT)


# --------------------------------------------------------------------------- the README section


def test_readme_method_contract_section_runs_as_written(tmp_path):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## The method contract", 1)[1].split("\n## ", 1)[0]
    blocks = dict(re.findall(r"```python\n# (\S+)\n(.*?)```", section, re.S))
    assert set(blocks) == {"methods/shop.py", "tests/test_shop.py"}
    for path, code in blocks.items():
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(code)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "5 passed" in done.stdout


def test_readme_shop_endpoint_on_the_bus(ipsc, served, tmp_path):
    """The README's endpoint served for real: its log line carries the request id."""
    proc, client = served
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = re.search(r"```python\n# methods/shop.py\n(.*?)```", readme, re.S).group(1)
    assert "shop.buy" not in call(ipsc, served, "sys.methods")["result"]
    folder = Path(str(proc.config_file)).parent
    (folder / "shop.py").write_text(code)
    try:
        assert "result" in call(ipsc, served, "sys.reload")
        assert "shop.buy" in call(ipsc, served, "sys.methods")["result"]
        rid = f"shop-{next(_ids)}"
        order = {"item": "tea", "price": "1.25", "quantity": 2}
        request = {"jsonrpc": "2.0", "id": rid, "method": "shop.buy", "params": [order]}
        reply = ipsc.call_rpc(SERVER_UNIT, client, request, timeout=WAIT, parse_float=decimal.Decimal)
        assert reply["result"] == {"item": "tea", "total": decimal.Decimal("2.50")}
        wait_for(lambda: f" shop [{rid}] Caller(unit=0, client=6, type=" in proc.output(),
                 "the README's log line", WAIT)
    finally:
        (folder / "shop.py").unlink()
        call(ipsc, served, "sys.reload")


# --------------------------------------------------------------------------- the pieces


def test_unannotated_methods_get_no_validator_and_keep_the_counting_path():
    import inspect

    from sbusr.dispatch import typed

    def plain(ctxt, a, b=1):
        return a

    def anything(ctxt, a: Any, b: object = 1):
        return a

    def checked(ctxt, a: int):
        return a

    def sig(fn):
        params = list(inspect.signature(fn).parameters.values())[1:]
        return inspect.Signature(params)

    assert typed.validator_for("plain", plain, sig(plain)) is None
    assert typed.validator_for("anything", anything, sig(anything)) is None
    validate = typed.validator_for("checked", checked, sig(checked))
    arguments = {"a": "7"}
    validate(arguments)
    assert arguments == {"a": 7}


def test_call_context_is_a_dict_with_a_deadline():
    import pickle

    from oslo_context.context import RequestContext, get_current

    from sbusr.dispatch.context import CallContext

    values = {"request_id": 0, "source": {"unit": 1, "client": 2, "type": 3}}
    ctxt = CallContext(values, "ns.m")
    assert ctxt == values and isinstance(ctxt, dict) and isinstance(ctxt, RequestContext)
    assert (ctxt.request_id, tuple(ctxt.caller)) == (0, (1, 2, 3))
    assert (ctxt.deadline, ctxt.time_left()) == (None, None)
    ctxt.set_timeout(60)
    assert 0 < ctxt.time_left() <= 60
    ctxt.deadline = 1.0
    assert ctxt.time_left() == 0.0
    assert ctxt.get_logging_values()["request_id"] == "0"
    copy = pickle.loads(pickle.dumps(ctxt))
    assert (copy, copy.method, copy.deadline) == (values, "ns.m", 1.0)
    assert get_current() is not ctxt  # made per call, never the thread's oslo context


def test_decimal_keys_and_strings():
    body = dumps(result_response(1, {decimal.Decimal("1.50"): [decimal.Decimal("-0.0")]}))
    assert body == b'{"jsonrpc":"2.0","id":1,"result":{"1.50":[-0.0]}}'
    body = dumps(result_response(1, [decimal.Decimal("1.00")]), "string")
    assert body == b'{"jsonrpc":"2.0","id":1,"result":["1.00"]}'


def _big_endpoint() -> str:
    """Three namespaces of 40 documented methods: together over the 15,999 bytes of one reply."""
    lines = ["import oslo_messaging", ""]
    for part in range(3):
        lines += ["", f"class Big{part}:", f"    target = oslo_messaging.Target(namespace='big{part}')", ""]
        for n in range(40):
            lines += [f"    def method_{n}(self, ctxt, quantity: int, label: str = 'x') -> list[int]:",
                      f"        '''Method number {n} of part {part}, documented at some length.'''",
                      "        return [quantity]", ""]
    return "\n".join(lines)


def test_a_document_larger_than_one_reply_is_fetched_by_namespace(bus, ipsc, served, mode, tmp_path):
    proc, client = served
    folder = Path(str(proc.config_file)).parent
    (folder / "big.py").write_text(_big_endpoint())
    try:
        assert "result" in call(ipsc, served, "sys.reload")
        error = call(ipsc, served, "rpc.discover")["error"]
        assert error["code"] == INTERNAL_ERROR and "NOTIFY carries at most" in error["message"]
        part = call(ipsc, served, "rpc.discover", {"namespace": "big1"})["result"]
        assert [m["name"] for m in part["methods"]] == sorted(f"big1.method_{n}" for n in range(40))
        with ApiProcess(tmp_path, bus.port, client_id=35 if mode == "thread" else 36,
                        api={"server_client_id": client}) as api:
            response = api.request("GET", "/api/methods")
            assert response.status == 200, response.body
            doc = response.json()
        assert [m["name"] for m in doc["methods"]] == call(ipsc, served, "sys.methods")["result"]
        check_openrpc(doc)
    finally:
        (folder / "big.py").unlink()
        call(ipsc, served, "sys.reload")
