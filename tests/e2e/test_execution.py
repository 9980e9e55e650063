"""The execution layer: time limits, crashes, busy replies, recycling and reloading.

Unit tests of the pieces first, then end to end through a real bus, real sbusr-server processes
(thread mode and process mode) and an IPSC stand-in, as a flow would call them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import os
import queue
import re
import signal
import textwrap
import threading
import time
from pathlib import Path

import oslo_messaging
import pytest

from sbusr import dispatch
from sbusr.execution import limits as exec_limits
from sbusr.execution import messages, threads
from sbusr.jsonrpc.errors import (
    CALL_TIMEOUT,
    METHOD_NOT_FOUND,
    SERVER_BUSY,
    SERVER_ERROR,
    WORKER_CRASHED,
    CallTimeout,
)
from sbusr.jsonrpc.protocol import POSITIONAL_KEY
from sbusr.smartbus import codec
from sbusr.testing.ipsc import FakeIpsc
from tests.helpers.processes import eventually, pid_alive
from tests.helpers.server import ServerProcess, write_config

WAIT = 15.0  # generous bound for anything that should happen "soon"

ENDPOINT = textwrap.dedent('''
    import ctypes
    import os
    import time

    import oslo_messaging

    from sbusr.decorators import limits

    VERSION = "v1"


    class Ep:
        target = oslo_messaging.Target(namespace="ep")

        def info(self, ctxt):
            return [VERSION, os.getpid()]

        def add(self, ctxt, a, b):
            return a + b

        def hang(self, ctxt, path, seconds=30):
            with open(path, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(seconds)
            return "woke up"

        def slow(self, ctxt, seconds):
            time.sleep(seconds)
            return seconds

        @limits(timeout=0)
        def wait_file(self, ctxt, path, started=None):
            if started:
                open(started, "w").close()
            deadline = time.monotonic() + 120
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.02)
            return "released"

        @limits(timeout=0)
        def unlimited(self, ctxt, seconds):
            time.sleep(seconds)
            return "done"

        @limits(timeout=0.5)
        def short(self, ctxt, seconds):
            time.sleep(seconds)
            return "done"

        def exit(self, ctxt, code):
            os._exit(code)

        def segfault(self, ctxt):
            ctypes.string_at(0)

        def fail(self, ctxt):
            raise KeyError("nope")
''')

HOOK = textwrap.dedent('''
    import os

    PATH = {path!r}


    def init():
        with open(PATH, "a") as f:
            f.write(f"{{os.getpid()}}\\n")
''')

_ids = itertools.count()


def with_version(version: str) -> str:
    return ENDPOINT.replace('VERSION = "v1"', f'VERSION = "{version}"')


def wait_for(predicate, timeout: float = WAIT, interval: float = 0.05):
    return eventually(predicate, timeout, interval)


# =========================================================================== unit tests

def test_limits_decorator_marks_functions_static_class_methods_and_classes():
    @exec_limits.limits(timeout=5)
    class Cls:
        @exec_limits.limits(timeout=0)
        def a(self, ctxt):
            pass

        @exec_limits.limits(timeout=2)
        @staticmethod
        def b(ctxt):
            pass

        @exec_limits.limits(timeout=3)
        @classmethod
        def c(cls, ctxt):
            pass

        def d(self, ctxt):
            pass

    obj = Cls()
    assert getattr(obj.a, exec_limits.LIMITS_ATTR).timeout == 0
    assert getattr(Cls.b, exec_limits.LIMITS_ATTR).timeout == 2
    assert getattr(Cls.c, exec_limits.LIMITS_ATTR).timeout == 3
    assert getattr(obj.d, exec_limits.LIMITS_ATTR, None) is None
    assert getattr(Cls, exec_limits.LIMITS_ATTR).timeout == 5
    for bad in (-1, float("nan"), float("inf"), "5", True):
        with pytest.raises(ValueError):
            exec_limits.limits(timeout=bad)


def test_watchdog_fires_in_deadline_order_and_skips_disarmed():
    dog = threads.Watchdog(name="test-watchdog")
    fired: list[str] = []
    done = threading.Event()
    try:
        dog.arm(0.3, lambda: (fired.append("late"), done.set()))
        cancelled = dog.arm(0.1, lambda: fired.append("cancelled"))
        dog.arm(0.05, lambda: fired.append("early"))
        dog.disarm(cancelled)
        assert done.wait(5)
        assert fired == ["early", "late"]
    finally:
        dog.close()


def test_watchdog_heap_does_not_keep_disarmed_entries():
    dog = threads.Watchdog(name="test-watchdog-purge")
    try:
        for _ in range(3 * threads.Watchdog.PURGE_AT):
            dog.disarm(dog.arm(60, lambda: None))
        assert len(dog._heap) < threads.Watchdog.PURGE_AT
    finally:
        dog.close()


class _StubMessage:
    def __init__(self):
        self.answered = threading.Event()
        self.error = None

    def answer_early(self, error):
        self.error = error
        self.answered.set()
        return True


def test_thread_mode_answers_overrun_early_and_hands_the_slot_on():

    adapter = dispatch.EndpointAdapter(_Limited(), dispatch.EndpointOrigin("module", __name__, "_Limited"))
    executor = threads.ThreadExecutor(workers=1, call_timeout=0.2)
    executor.bind(dispatch.Registry([adapter]))
    release = threading.Event()
    message = _StubMessage()
    outcome: dict = {}

    def stuck_call():
        with dispatch.serving(message):  # what sbusr's Dispatcher does around every call
            try:
                adapter.blocked({}, event=release)
            except oslo_messaging.ExpectedException as exc:
                outcome["late"] = exc.exc_info[1]

    caller = threading.Thread(target=stuck_call)
    caller.start()
    try:
        assert message.answered.wait(5), "the watchdog did not answer the overrunning call"
        assert isinstance(message.error, CallTimeout)
        assert caller.is_alive()  # answered while the method is still running
        assert executor.stats()["abandoned"] == 1
        assert adapter.fast({}, **{POSITIONAL_KEY: [7]}) == 7  # its only slot was handed on
    finally:
        release.set()
        caller.join(5)
        executor.shutdown()
    assert isinstance(outcome["late"], CallTimeout)
    assert executor.stats()["abandoned"] == 0


class _Limited:
    target = oslo_messaging.Target(namespace="lim")

    def fast(self, ctxt, x):
        return x

    def sleepy(self, ctxt, seconds):
        time.sleep(seconds)
        return "slept"

    def blocked(self, ctxt, event):
        event.wait(30)
        return "released"

    @exec_limits.limits(timeout=0)
    def patient(self, ctxt, seconds):
        time.sleep(seconds)
        return "patient"


def test_thread_executor_applies_config_and_method_limits_and_leaves_sys_alone():
    from sbusr.endpoints import system

    adapter = dispatch.EndpointAdapter(_Limited(), dispatch.EndpointOrigin("module", __name__, "_Limited"))
    sys_adapter = dispatch.adapter_from_origin(dispatch.EndpointOrigin("builtin", system.__name__,
                                                                       "SystemEndpoint"))
    executor = threads.ThreadExecutor(workers=2, call_timeout=0.3)
    executor.bind(dispatch.Registry([adapter, sys_adapter]))
    try:
        assert sys_adapter.invoker is dispatch.direct_invoke
        assert adapter.fast({}, **{POSITIONAL_KEY: [7]}) == 7
        with pytest.raises(oslo_messaging.ExpectedException) as info:
            adapter.sleepy({}, seconds=2)
        assert isinstance(info.value.exc_info[1], CallTimeout)
        assert adapter.patient({}, seconds=0.5) == "patient"
    finally:
        executor.shutdown()


def test_control_messages_round_trip_and_bad_frames_are_refused():
    reply = b"\x15\x5b" + b"x" * 40
    samples = [
        messages.Ready(123, None, ["a", "b.c"], [["x", "y"]]),
        messages.Ready(5, "ValueError: boom"),
        messages.Failed(6, "worker_init m:f raised ValueError: boom", "Traceback ..."),
        messages.Started(7, 2.5, "ep.slow", "id-1"),
        messages.Started(8, 0.0, "sys.reload", 42),
        messages.Done(9, (messages.Outcome("ep.add"),
                          messages.Outcome("ep.x", -32601, "Method not found: ep.x")), reply),
        messages.Done(10, ()),
        messages.Exit(),
    ]
    decoder = codec.FrameDecoder()
    stream = b"".join(messages.encode(m) for m in samples)
    frames = decoder.feed_frames(stream)
    assert all(messages.is_control(fields) for _raw, fields in frames)
    decoded = [messages.decode_frame(raw, fields) for raw, fields in frames]
    assert decoded == samples
    for cmd, body in [(messages.DONE, b"\x01"), (messages.READY, b"not json"), (99, b"")]:
        with pytest.raises(messages.MessageError):
            messages.decode(cmd, body)


# =========================================================================== end to end

@pytest.fixture(scope="module")
def bus(sbusr_bus):
    """The session's development bus: this module's clients take their addresses from sbusr_identities."""
    return sbusr_bus


@pytest.fixture(scope="module")
def ipsc(bus, sbusr_identities):
    unit, process = sbusr_identities.ipsc()
    with FakeIpsc(bus.host, bus.port, unit=unit, process=process) as fake:
        yield fake


class Served:
    """One sbusr-server under test: its process, endpoint file and address."""

    def __init__(self, proc: ServerProcess, endpoint: Path, address: tuple[int, int],
                 extra: dict | None = None):
        self.proc = proc
        self.endpoint = endpoint
        self.unit, self.client = address
        self.extra = extra or {}

    def call(self, ipsc: FakeIpsc, method: str, params=None, request_id=None, timeout: float = WAIT):
        rid = request_id if request_id is not None else f"r{next(_ids)}"
        request = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params or []}
        return ipsc.call_rpc(self.unit, self.client, request, timeout=timeout)


def _serve(bus, folder: Path, address: tuple[int, int], execution_opts: dict,
           env: dict | None = None) -> ServerProcess:
    (folder / "ep.py").write_text(ENDPOINT)
    conf = write_config(folder / "sbusr.conf", bus.port,
                        {"endpoints": {"directories": [folder], "entry_points": True},
                         "execution": execution_opts}, unit=address[0], client=address[1])
    with pytest.MonkeyPatch.context() as mp:
        for key, value in (env or {}).items():
            mp.setenv(key, value)
        return ServerProcess(conf).start()


@pytest.fixture(scope="module")
def thread_server(bus, ipsc, tmp_path_factory, sbusr_identities):
    folder = tmp_path_factory.mktemp("thread-ep")
    address = sbusr_identities.server()
    proc = _serve(bus, folder, address, {"mode": "thread", "workers": 2, "call_timeout": 1.0})
    try:
        yield Served(proc, folder / "ep.py", address)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def process_server(bus, ipsc, tmp_path_factory, sbusr_identities):
    folder = tmp_path_factory.mktemp("process-ep")
    hooks = tmp_path_factory.mktemp("hooks")
    init_log = hooks / "init.log"
    (hooks / "sbusr_test_hook.py").write_text(HOOK.format(path=str(init_log)))
    pythonpath = os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")]))
    address = sbusr_identities.server()
    proc = _serve(bus, folder, address, {"mode": "process", "workers": 2, "call_timeout": 1.0,
                                         "worker_init": "sbusr_test_hook:init"}, {"PYTHONPATH": pythonpath})
    try:
        yield Served(proc, folder / "ep.py", address, {"init_log": init_log})
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def small_server(bus, ipsc, tmp_path_factory, sbusr_identities):
    folder = tmp_path_factory.mktemp("small-ep")
    address = sbusr_identities.server()
    proc = _serve(bus, folder, address, {"mode": "process", "workers": 1, "queue_size": 1,
                                         "max_tasks_per_child": 3, "call_timeout": 0})
    try:
        yield Served(proc, folder / "ep.py", address)
    finally:
        proc.stop()


def _concurrently(fn, items, workers: int | None = None):
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers or len(items)) as pool:
        return list(pool.map(fn, items))


# --------------------------------------------------------------------------- thread mode

def test_thread_mode_timeout_is_prompt_and_server_keeps_answering(thread_server, ipsc, tmp_path):
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        hung = pool.submit(thread_server.call, ipsc, "ep.hang", [str(tmp_path / "p"), 5])
        assert thread_server.call(ipsc, "ep.add", [1, 2])["result"] == 3  # answered meanwhile
        reply = hung.result(WAIT)
    assert reply["error"]["code"] == CALL_TIMEOUT, reply
    assert reply["error"]["data"] == {"timeout": 1.0}
    assert thread_server.call(ipsc, "ep.short", [3])["error"]["code"] == CALL_TIMEOUT
    assert thread_server.call(ipsc, "ep.unlimited", [1.3])["result"] == "done"  # limits(timeout=0)
    assert thread_server.call(ipsc, "ep.info")["result"][1] == thread_server.proc.proc.pid
    assert "abandoned" in thread_server.proc.output()


def test_thread_mode_sighup_reload_picks_up_edited_file(thread_server, ipsc):
    assert thread_server.call(ipsc, "ep.info")["result"][0] == "v1"
    thread_server.endpoint.write_text(with_version("v2"))
    thread_server.proc.signal(signal.SIGHUP)
    assert wait_for(lambda: thread_server.call(ipsc, "ep.info")["result"][0] == "v2")


# --------------------------------------------------------------------------- process mode

def test_process_mode_timeout_kills_and_replaces_the_stuck_worker(process_server, ipsc, tmp_path):
    marker = tmp_path / "stuck.pid"
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        hung = pool.submit(process_server.call, ipsc, "ep.hang", [str(marker)])
        assert wait_for(marker.exists)
        assert process_server.call(ipsc, "ep.add", [2, 3])["result"] == 5  # the other worker serves
        reply = hung.result(WAIT)
    assert reply["error"]["code"] == CALL_TIMEOUT, reply
    stuck = int(marker.read_text())
    assert wait_for(lambda: not pid_alive(stuck)), "the stuck worker was not killed"

    def two_fresh_workers():
        pids = {process_server.call(ipsc, "ep.info")["result"][1] for _ in range(4)}
        return len(pids) == 2 and stuck not in pids

    assert wait_for(two_fresh_workers, interval=0.2)


@pytest.mark.parametrize("method, params", [("ep.exit", [3]), ("ep.segfault", [])])
def test_process_mode_crash_costs_only_the_call(process_server, ipsc, method, params):
    reply = process_server.call(ipsc, method, params)
    assert reply["error"]["code"] == WORKER_CRASHED, reply
    replies = _concurrently(lambda i: process_server.call(ipsc, "ep.add", [i, 1]), list(range(6)), 3)
    assert [r["result"] for r in replies] == [i + 1 for i in range(6)]
    want = "exit code 3" if method == "ep.exit" else "SIGSEGV"
    assert want in reply["error"]["message"]


def test_process_mode_errors_match_thread_mode(process_server, thread_server, ipsc):
    for method, params in [("ep.fail", []), ("ep.add", [1]), ("ep.nosuch", []), ("ep.add", ["a", 1])]:
        in_process = process_server.call(ipsc, method, params, request_id="same")
        in_thread = thread_server.call(ipsc, method, params, request_id="same")
        assert in_process == in_thread, method
        assert "error" in in_process
    assert process_server.call(ipsc, "ep.fail")["error"]["data"] == {"type": "builtins.KeyError"}


def test_sys_methods_answer_and_methods_run_in_workers(process_server, ipsc):
    assert process_server.call(ipsc, "sys.ping")["result"] == "pong"
    assert "ep.info" in process_server.call(ipsc, "sys.methods")["result"]
    worker_pid = process_server.call(ipsc, "ep.info")["result"][1]
    assert worker_pid != process_server.proc.proc.pid
    assert worker_pid in process_server.proc.workers()


def test_worker_init_runs_once_in_every_worker(process_server, ipsc):
    seen = {process_server.call(ipsc, "ep.info")["result"][1] for _ in range(6)}
    started = process_server.extra["init_log"].read_text().split()
    assert len(started) == len(set(started)), "worker_init ran twice in one worker"
    assert seen <= {int(p) for p in started}
    assert process_server.proc.proc.pid not in {int(p) for p in started}


def test_process_mode_reload_by_sighup_and_by_sys_reload(process_server, ipsc):
    old = {process_server.call(ipsc, "ep.info")["result"][1] for _ in range(4)}
    process_server.endpoint.write_text(with_version("v2"))
    process_server.proc.signal(signal.SIGHUP)
    assert wait_for(lambda: process_server.call(ipsc, "ep.info")["result"][0] == "v2", interval=0.2)
    assert wait_for(lambda: not [p for p in old if pid_alive(p)]), "old workers were not retired"

    process_server.endpoint.write_text(with_version("v3"))
    summary = process_server.call(ipsc, "sys.reload", timeout=60)["result"]
    assert "ep.info" in summary["methods"]
    # sys.reload returns once the new workers serve: the very next calls run the new code
    assert {process_server.call(ipsc, "ep.info")["result"][0] for _ in range(4)} == {"v3"}


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_reload_under_load_answers_every_request_exactly_once(request, ipsc, mode):
    served: Served = request.getfixturevalue(f"{mode}_server")
    before = served.call(ipsc, "ep.info")["result"][0]
    versions = [before, f"{mode}-a", f"{mode}-b"]
    while True:  # start from a clean queue of notifies
        try:
            ipsc.notifies.get_nowait()
        except queue.Empty:
            break
    stop = threading.Event()
    sent: list[str] = []
    answers: dict[str, dict] = {}
    failures: list[BaseException] = []
    lock = threading.Lock()

    def caller(n: int) -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            rid = f"load-{mode}-{n}-{i}"
            with lock:
                sent.append(rid)
            try:
                reply = served.call(ipsc, "ep.info", request_id=rid)
            except BaseException as exc:
                failures.append(exc)
                return
            with lock:
                answers[rid] = reply

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    def answered(version: str | None = None) -> int:
        with lock:
            return sum(1 for a in answers.values() if version in (None, a.get("result", [None])[0]))

    def answered_after(count: int, version: str | None = None):
        """A condition: ``count`` more answers than now (of ``version`` when given) have come."""
        seen = answered(version)
        return lambda: failures or answered(version) >= seen + count

    try:
        for version in versions[1:]:
            assert wait_for(answered_after(8), timeout=60)  # calls are flowing before each reload
            served.endpoint.write_text(with_version(version))
            served.proc.signal(signal.SIGHUP)
            assert wait_for(answered_after(4, version), timeout=60), f"no answer from {version}"
    finally:
        stop.set()
        for t in threads:
            t.join(WAIT * 2)
    assert not failures, failures
    assert sorted(answers) == sorted(sent)
    assert len(set(sent)) == len(sent) > 20
    got = collections.Counter(reply["result"][0] for reply in answers.values())
    assert set(got) <= set(versions), got
    assert all(reply["id"] == rid for rid, reply in answers.items())
    # a marker call's reply comes after any duplicate the server would have sent for the load's calls
    marker = f"marker-{mode}-{next(_ids)}"
    assert served.call(ipsc, "ep.add", [1, 1], request_id=marker)["result"] == 2
    titles = collections.Counter()
    while (title := ipsc.notifies.get(timeout=WAIT).title) != marker:
        titles[title] += 1
    assert titles == collections.Counter(sent), "a request was answered twice or not at all"
    assert wait_for(lambda: served.call(ipsc, "ep.info")["result"][0] == versions[-1])


# --------------------------------------------------------------------------- admission, recycling

def test_full_queue_answers_busy_at_once_and_admitted_calls_succeed(small_server, ipsc):
    order: list[tuple[str, int | None]] = []
    lock = threading.Lock()

    def one(i: int) -> dict:
        reply = small_server.call(ipsc, "ep.slow", [1.5], request_id=f"busy-{i}")
        with lock:
            order.append(("ok" if "result" in reply else "error", reply.get("error", {}).get("code")))
        return reply

    replies = _concurrently(one, list(range(5)))
    codes = collections.Counter(r["error"]["code"] if "error" in r else "ok" for r in replies)
    assert codes == {"ok": 2, SERVER_BUSY: 3}, replies
    # the refused ones were answered before the first admitted call could finish
    assert [kind for kind, _ in order[:3]] == ["error"] * 3, order
    assert small_server.call(ipsc, "ep.add", [1, 1])["result"] == 2


def test_max_tasks_per_child_recycles_and_reimports(small_server, ipsc):
    first = small_server.call(ipsc, "ep.info")["result"]
    for _ in range(4):  # reach the first call of a fresh worker
        current = small_server.call(ipsc, "ep.info")["result"]
        if current[1] != first[1]:
            break
    else:
        pytest.fail("the worker was never recycled")
    fresh_pid = current[1]
    small_server.endpoint.write_text(with_version("recycled"))
    # the fresh worker already imported the file: calls 2 and 3 still run the code it loaded
    assert [small_server.call(ipsc, "ep.info")["result"] for _ in range(2)] == [["v1", fresh_pid]] * 2
    after = small_server.call(ipsc, "ep.info")["result"]
    assert after[1] != fresh_pid
    assert after[0] == "recycled"


# --------------------------------------------------------------------------- one log line per outcome

_RECORD = re.compile(r"^\S+ \S+ \d+ (?P<level>[A-Z]+) (?P<logger>\S+) \[-\] (?P<message>.*)$")


def _records(text: str, logger: str, pattern: str) -> list[re.Match[str]]:
    """Log records (not traceback continuation lines) of a logger matching the regular expression
    ``logger`` whose message matches ``pattern``."""
    found = []
    for line in text.splitlines():
        record = _RECORD.match(line)
        if record and re.fullmatch(logger, record["logger"]) and re.search(pattern, record["message"]):
            found.append(record)
    return found


def _outcome_records(served: Served, ipsc: FakeIpsc, offset: int, pattern: str,
                     logger: str = r"sbusr\.dispatch") -> list[re.Match[str]]:
    """``logger``'s records matching ``pattern`` logged after ``offset``: waits for the first, then for
    the record of a later marker call, and returns those logged before the marker's (a second record of
    the outcome, if one were written, would be there by then)."""
    assert wait_for(lambda: _records(served.proc.output()[offset:], logger, pattern)), pattern
    marker = f"ep.marker_{next(_ids)}"
    assert served.call(ipsc, marker)["error"]["code"] == METHOD_NOT_FOUND
    text = wait_for(lambda: (out := served.proc.output()[offset:])
                    and _records(out, "sbusr.dispatch", re.escape(marker)) and out)
    assert text, f"no record of {marker}"
    end = text.index(marker)
    return _records(text[:end], logger, pattern)


@pytest.mark.parametrize("served", ["thread_server", "process_server"])
def test_each_outcome_logs_one_line_with_caller_and_code(request, ipsc, served):
    server: Served = request.getfixturevalue(served)
    caller = f"{ipsc.unit}/{ipsc.process}"
    offset = len(server.proc.output())
    assert server.call(ipsc, "ep.nosuch_typo")["error"]["code"] == METHOD_NOT_FOUND
    lines = _outcome_records(server, ipsc, offset, "nosuch_typo")
    assert len(lines) == 1 and lines[0]["level"] == "INFO", lines
    assert caller in lines[0]["message"] and "-32601" in lines[0]["message"], lines
    assert "UnsupportedVersion" not in server.proc.output()[offset:]

    offset = len(server.proc.output())
    assert server.call(ipsc, "ep.short", [3])["error"]["code"] == CALL_TIMEOUT
    lines = _outcome_records(server, ipsc, offset, "exceeded its", r"sbusr\.execution(\.\w+)*")
    assert len(lines) == 1 and lines[0]["level"] == "WARNING", lines
    assert caller in lines[0]["message"] and "-32001" in lines[0]["message"], lines

    offset = len(server.proc.output())
    assert server.call(ipsc, "ep.fail")["error"]["code"] == SERVER_ERROR
    records = _outcome_records(server, ipsc, offset, r"\bep\.fail\b")  # nothing more follows the reply
    assert len(records) == 1 and records[0]["level"] == "ERROR", records  # one record, with its traceback
    assert caller in records[0]["message"], records
    mentions = [line for line in server.proc.output()[offset:].splitlines()
                if _RECORD.match(line) and "ep.fail" in line]
    assert len(mentions) == 1, mentions
    assert "Traceback (most recent call last)" in server.proc.output()[offset:]
