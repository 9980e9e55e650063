"""The /status page in a real browser: headless Chromium against a running stack with traffic.

A development bus, sbusr-server, sbusr-api (with an auth token) and an IPSC stand-in that keeps
calling methods; Chromium logs in through ``?token=`` and the test reads the rendered DOM as the
page refreshes itself. The screenshot is saved under ``test-artifacts/`` (git-ignored).

Chromium is Debian's package, installed by :func:`tests.helpers.browser.find_or_install_chromium`
when missing (as root); the tests are skipped, with the reason, only where it cannot be installed.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sbusr.testing.api_process import ApiProcess
from sbusr.testing.ipsc import FakeIpsc
from sbusr.testing.processes import BusProcess
from tests.helpers.browser import Browser, find_or_install_chromium, wait_until
from tests.helpers.server import SERVER_CLIENT, SERVER_UNIT, ServerProcess, write_config

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
TOKEN = "status-page-token"
IPSC_UNIT, IPSC_PROCESS = 3, 7
FAILING_TEXT = "status page test failure"


@pytest.fixture(scope="module")
def chromium() -> str:
    path, why = find_or_install_chromium()
    if path is None:
        pytest.skip(why)
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    folder = tmp_path_factory.mktemp("status-page")
    with BusProcess() as bus:
        conf = write_config(folder / "server.conf", bus.port, {"metrics": {"port": 0}})
        with ServerProcess(conf) as server, \
                FakeIpsc(bus.host, bus.port, IPSC_UNIT, IPSC_PROCESS) as ipsc, \
                ApiProcess(folder, bus.port, client_id=40, api={"auth_token": TOKEN}) as api:
            yield {"bus": bus, "server": server, "ipsc": ipsc, "api": api}


class Traffic:
    """Calls echo and add from the IPSC stand-in until stopped, as an IVR would; counts the replies."""

    def __init__(self, ipsc: FakeIpsc) -> None:
        self.ipsc = ipsc
        self.replies = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            n = next(self._ids)
            method, params = ("echo", ["hello"]) if n % 3 else ("add", [n, 1])
            request = {"jsonrpc": "2.0", "id": f"t{n}", "method": method, "params": params}
            try:
                reply = self.ipsc.call_rpc(SERVER_UNIT, SERVER_CLIENT, request)
            except TimeoutError as exc:
                self.failures.append(str(exc))
                continue
            if "result" not in reply:
                self.failures.append(str(reply))
            self.replies += 1

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def method_cell(browser: Browser, method: str, column: str) -> str | None:
    """The text of one cell of ``method``'s row in the methods table (None while there is no row)."""
    return browser.evaluate(f"document.querySelector(`#method-rows tr[data-method='{method}'] td.{column}`)"
                            "?.textContent ?? null")


def method_calls(browser: Browser, method: str) -> int:
    """The "calls" figure of ``method``'s row as the page shows it (0 while there is no row)."""
    return int((method_cell(browser, method, "calls") or "0").replace(",", ""))


def call(ipsc: FakeIpsc, request_id: str, method: str, *params: object) -> dict[str, object]:
    return ipsc.call_rpc(SERVER_UNIT, SERVER_CLIENT,
                         {"jsonrpc": "2.0", "id": request_id, "method": method, "params": list(params)})


def text_of(element_id: str) -> str:
    """JavaScript: the text of an element by id ("" while it is not there)."""
    return f"(document.getElementById('{element_id}')?.textContent ?? '')"


def test_status_page_in_chromium(chromium: str, stack: dict[str, object]) -> None:
    api, ipsc = stack["api"], stack["ipsc"]
    assert isinstance(api, ApiProcess) and isinstance(ipsc, FakeIpsc)
    with Traffic(ipsc) as traffic, Browser(chromium) as browser:
        # ?token= once: the page keeps it in a cookie and drops it from the address
        browser.navigate(f"{api.base_url}/status?token={TOKEN}")
        assert browser.evaluate("location.pathname + location.search") == "/status"
        assert browser.evaluate("document.cookie") == ""  # HttpOnly: the page's script cannot read it

        browser.wait_for(f"{text_of('bus-state')} === 'connected'", "the bus link shown up")
        browser.wait_for(f"{text_of('server-state')} === 'answers'", "sbusr-server shown answering")
        row = f"#ipsc-rows tr[data-unit='{IPSC_UNIT}'][data-process='{IPSC_PROCESS}']"
        info = browser.wait_for(f"document.querySelector(\"{row}\")?.textContent", "the IPSC listed")
        assert f"fake-ipsc-{IPSC_UNIT}-{IPSC_PROCESS}" in info
        assert browser.evaluate(text_of("server-mode")).endswith("thread")

        # method rows with counts that rise as the page refreshes itself
        first = wait_until(lambda: method_calls(browser, "echo"), "an echo row with calls")
        wait_until(lambda: method_calls(browser, "echo") > first, "the echo count to rise")
        wait_until(lambda: method_calls(browser, "add"), "an add row with calls")
        assert float(method_cell(browser, "echo", "rate") or 0) > 0

        # a failing call shows up as an error row (and in the method's errors by code)
        reply = call(ipsc, "fail-1", "exception", FAILING_TEXT)
        assert reply["error"]["code"] == -32000  # type: ignore[index]
        error = browser.wait_for(
            "(() => { const r = document.querySelector(\"#error-rows tr[data-method='exception']\");"
            " return r && {code: r.dataset.code, text: r.textContent}; })()", "the error row")
        assert error["code"] == "-32000" and FAILING_TEXT in error["text"]
        assert f"{IPSC_UNIT}:{IPSC_PROCESS}" in error["text"]  # the caller
        assert "-32000" in (method_cell(browser, "exception", "codes") or "")
        # an unknown method is counted under <unknown>, never under the name the caller made up
        call(ipsc, "nope-1", "no.such.method")
        wait_until(lambda: method_cell(browser, "<unknown>", "calls"), "the <unknown> row")
        assert method_cell(browser, "no.such.method", "calls") is None
        # the chart has drawn the traffic
        browser.wait_for("document.querySelectorAll('#chart rect').length > 0", "bars in the chart")
        browser.screenshot(ARTIFACTS / "status-page.png")
    assert traffic.replies > 0 and not traffic.failures, traffic.failures[:5]


def test_status_page_asks_for_the_token(chromium: str, stack: dict[str, object]) -> None:
    api = stack["api"]
    assert isinstance(api, ApiProcess)
    with Browser(chromium) as browser:
        browser.navigate(f"{api.base_url}/status")
        assert browser.evaluate("document.querySelector('form input[name=token]') !== null")
        submit = "document.getElementById('token').value = '{}'; document.querySelector('form').submit()"
        browser.evaluate(submit.format("wrong"))
        browser.wait_for(f"{text_of('error')}.includes('not valid')", "the wrong-token note")
        browser.evaluate(submit.format(TOKEN))
        browser.wait_for(f"{text_of('server-state')} === 'answers'", "the status page")
        assert browser.evaluate("location.pathname + location.search") == "/status"
        browser.screenshot(ARTIFACTS / "status-page-after-login.png")
