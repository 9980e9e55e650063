"""The thread facade's start and stop from different threads (a signal arriving while a server
starts): stop never joins a thread that is not started yet, and a stopped client stays stopped."""

from __future__ import annotations

import logging
import threading

import pytest

from sbusr.smartbus import codec
from sbusr.smartbus.interface import ClientConfig
from sbusr.smartbus.native import threaded
from sbusr.smartbus.native.threaded import ThreadedClient
from sbusr.testing.processes import free_port


def _client() -> ThreadedClient:
    # nothing listens there: the client keeps trying to connect, which is what a starting server does
    return ThreadedClient(ClientConfig(host="127.0.0.1", port=free_port(), unit_id=19, client_id=1,
                                       client_type=codec.CLIENT_TYPE_NODE), backoff_initial=0.01)


def test_a_stop_while_the_loop_thread_is_being_started_waits_for_it(monkeypatch, caplog):
    starting, stop_called = threading.Event(), threading.Event()

    class SlowStart(threading.Thread):
        """Starts only once stop() was called, and a moment later (widens the window a stop from
        another thread used to fall into: a loop thread published but not started yet)."""

        def start(self) -> None:
            starting.set()
            stop_called.wait(10)
            threading.Event().wait(0.2)
            super().start()

    plain_thread = threading.Thread
    monkeypatch.setattr(threaded.threading, "Thread", SlowStart)
    client = _client()
    errors: list[BaseException] = []

    def stop() -> None:
        starting.wait(10)
        stop_called.set()
        try:
            client.stop()
        except Exception as exc:
            errors.append(exc)

    stopper = plain_thread(target=stop)
    stopper.start()
    client.start()
    stopper.join(30)
    assert not stopper.is_alive(), "stop hung"
    assert not errors, errors
    problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not problems, problems  # e.g. "SmartBus client did not stop cleanly" (its loop never ran)
    client.stop()
    assert not client.connected


@pytest.mark.parametrize("first", ["start", "stop"])
def test_start_and_stop_from_two_threads_leave_a_stopped_client(first):
    client = _client()
    threads = [threading.Thread(target=client.start), threading.Thread(target=client.stop)]
    if first == "stop":
        threads.reverse()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "start or stop hung"
    client.stop()
    assert not client.connected
