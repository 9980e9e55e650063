"""Process-mode workers forked from a copy of the master taken before it started anything.

A worker started as a fresh interpreter spends most of its start-up importing oslo.messaging and
sbusr (≈0.4 s of CPU). ``sbusr-server`` in process mode therefore forks, right after reading its
configuration and while it still has a single thread, a *fork server*: a copy of itself with every
library module imported and no thread, socket or user module. Each worker is then one ``fork()``
of that copy, which reads the configuration files again and loads the endpoints itself, exactly
like a fresh interpreter would (so a reload still runs new code: the fork server never imports
endpoint modules).

The master talks to the fork server over a ``SOCK_SEQPACKET`` pair: a request carries the
worker's arguments, its link descriptor and what the master changed in its environment since the
fork (a worker sees the environment a fresh interpreter would); the answer is the new pid. The
fork server reaps its children and sends each exit status, which the master needs for the
``-32003`` reply of a call whose worker died. :class:`ForkedProcess` gives the master the part
of ``subprocess.Popen`` it uses. If the fork server itself dies, its workers leave (they watch
their parent) and the master starts the replacements as fresh interpreters.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import psutil

from sbusr.execution.exits import describe_exit
from sbusr.util import procs, ready

LOG = logging.getLogger("sbusr.execution")

#: The fork server's process name (``ps -o comm``, psutil's ``name()``); its command line is the master's.
NAME = "sbusr-forks"
#: Seconds the master waits for the fork server to answer a request before it starts the worker itself.
SPAWN_TIMEOUT = 10.0
_MAX_MESSAGE = 64 * 1024

#: ``run_worker(argv) -> exit status``: what a forked worker runs (sbusr-worker's main).
RunWorker = Callable[[list[str]], int]


class ForkServerGone(OSError):
    """The fork server is not there (any more): start the worker some other way."""


class ForkedProcess:
    """A worker forked by the fork server: the ``Popen`` subset the master uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._ended = threading.Event()
        try:  # psutil refuses to signal a pid that was reused by another process
            self._process: psutil.Process | None = psutil.Process(pid)
        except psutil.Error:
            self._process = None  # already reaped: its exit status is on its way

    def _exited(self, code: int | None) -> None:
        self.returncode = code
        self._ended.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status; None when the fork server died before it could tell."""
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"worker pid {self.pid}", timeout or 0.0)
        return self.returncode

    def kill(self) -> None:
        if self._process is not None and not self._ended.is_set():
            with contextlib.suppress(psutil.Error):
                self._process.kill()


class ForkServer:
    """The master's end: :meth:`spawn` from any thread; a reader thread routes what comes back."""

    def __init__(self, sock: socket.socket, pid: int, environment: dict[str, str]) -> None:
        self.pid = pid
        self._sock = sock
        self._environment = environment  # as the fork server has it
        self._lock = threading.Lock()  # one request at a time: answers come back in order
        self._answers: list[ForkedProcess | str] = []
        self._answered = threading.Condition()
        self._children: dict[int, ForkedProcess] = {}
        self.gone = False
        self._closing = False
        threading.Thread(target=self._read, name="sbusr-forks", daemon=True).start()

    def spawn(self, argv: Sequence[str], link_fd: int) -> ForkedProcess:
        """Fork a worker running ``run_worker(["--link-fd", N, *argv])`` with ``link_fd`` as N."""
        with self._lock:
            if self.gone:
                raise ForkServerGone("the fork server has exited")
            now, then = dict(os.environ), self._environment
            request = {"argv": list(argv), "unset": [name for name in then if name not in now],
                       "set": {name: value for name, value in now.items() if then.get(name) != value}}
            try:
                socket.send_fds(self._sock, [json.dumps(request).encode()], [link_fd])
            except OSError as exc:
                raise ForkServerGone(f"cannot reach the fork server: {exc}") from None
            with self._answered:
                if not self._answered.wait_for(lambda: self._answers or self.gone, SPAWN_TIMEOUT):
                    # a late answer would be taken for the next request's: this fork server is done
                    self.gone = True
                    LOG.error("the fork server pid %d did not answer within %g s; killing it", self.pid,
                              SPAWN_TIMEOUT)
                    with contextlib.suppress(OSError):
                        os.kill(self.pid, signal.SIGKILL)
                    raise OSError(f"the fork server did not answer within {SPAWN_TIMEOUT:g} s")
                if not self._answers:
                    raise ForkServerGone("the fork server has exited")
                answer = self._answers.pop(0)
        if isinstance(answer, ForkedProcess):
            return answer
        raise OSError(f"the fork server could not fork: {answer}")

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(_MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                break
            message = json.loads(data)
            if "pid" in message:
                child = ForkedProcess(message["pid"])
                self._children[child.pid] = child
                self._answer(child)
            elif "error" in message:
                self._answer(str(message["error"]))
            elif "exited" in message:
                ended: ForkedProcess | None = self._children.pop(int(message["exited"]), None)
                if ended is not None:
                    ended._exited(message["code"])
        self._lost()

    def _answer(self, answer: ForkedProcess | str) -> None:
        with self._answered:
            self._answers.append(answer)
            self._answered.notify_all()

    def _lost(self) -> None:
        """EOF: the fork server exited; its workers leave by themselves (their parent is gone)."""
        with self._answered:
            self.gone = True
            self._answered.notify_all()
        for child in list(self._children.values()):
            child._exited(None)
        self._children.clear()
        code: int | None = None
        with contextlib.suppress(ChildProcessError):
            code = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        if not self._closing:
            LOG.error("the fork server pid %d exited (%s); new workers start as fresh interpreters",
                      self.pid, describe_exit(code))

    def close(self) -> None:
        """The master is stopping: the fork server leaves (its workers were retired already)."""
        self._closing = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)


def start(run_worker: RunWorker) -> ForkServer | None:
    """Fork the fork server now (call it while this process has one thread); None if it cannot.

    Returns in the master only: the fork server and the workers it forks never come back here.
    """
    import sbusr.execution.worker.serve  # noqa: F401  (what every worker imports: once, here)

    threads = _thread_count()
    if threads > 1:  # a copy of a lock another thread held could never be released
        LOG.warning("not starting a fork server: %d threads are running; workers start as fresh interpreters",
                    threads)
        return None

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    master = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        ours.close()
        _serve(theirs, master, run_worker)
    theirs.close()
    return ForkServer(ours, pid, dict(os.environ))


def _thread_count() -> int:
    """Threads of this process, a C library's included (Python's count misses those)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _serve(sock: socket.socket, master: int, run_worker: RunWorker) -> NoReturn:
    """The fork server's life: fork a worker per request, report each exit, leave with the master."""
    try:
        procs.set_parent_death_signal(master, signal.SIGKILL)
        inherited = procs.process_name()
        procs.set_process_name(NAME)
        ready.forget()
        with open(os.devnull, "rb") as null:  # workers read nothing, as with stdin=DEVNULL
            os.dup2(null.fileno(), 0)
        for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):  # it leaves with the master, not before
            signal.signal(signum, signal.SIG_IGN)
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wake_w)
        gc.freeze()  # what is here now is shared with every worker: keep the collector off those pages
        while True:
            readable, _, _ = select.select([sock.fileno(), wake_r], [], [])
            if wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
                _report_exits(sock)
            if sock.fileno() in readable:
                job = _receive(sock)
                if job is None:
                    os._exit(0)  # the master is gone or closing
                argv, link_fd, environment = job
                try:
                    pid = os.fork()
                except OSError as exc:
                    os.close(link_fd)
                    sock.send(json.dumps({"error": str(exc)}).encode())
                    continue
                if pid == 0:
                    signal.set_wakeup_fd(-1)
                    for fd in (wake_r, wake_w):
                        os.close(fd)
                    sock.close()
                    _run(run_worker, inherited, ["--link-fd", str(link_fd), *argv], environment)
                os.close(link_fd)
                sock.send(json.dumps({"pid": pid}).encode())
    except BaseException:  # the master sees EOF and says so; this is the reason
        traceback.print_exc()
        os._exit(1)


def _receive(sock: socket.socket) -> tuple[list[str], int, dict[str, Any]] | None:
    """A request: the worker's arguments, its link descriptor, the master's environment changes."""
    try:
        data, fds, _flags, _addr = socket.recv_fds(sock, _MAX_MESSAGE, 1)
    except OSError:
        return None
    if not data or not fds:
        for fd in fds:
            os.close(fd)
        return None
    request = json.loads(data)
    return [str(arg) for arg in request["argv"]], fds[0], request


def _report_exits(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        with contextlib.suppress(OSError):
            sock.send(json.dumps({"exited": pid, "code": os.waitstatus_to_exitcode(status)}).encode())


def _run(run_worker: RunWorker, name: str, argv: list[str], environment: dict[str, Any]) -> NoReturn:
    """In a forked worker: the environment and signal dispositions of a fresh interpreter, then the worker."""
    code = 1
    try:
        for unset in environment["unset"]:
            os.environ.pop(unset, None)
        os.environ.update(environment["set"])
        procs.set_process_name(name)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        code = run_worker(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        logging.shutdown()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)

