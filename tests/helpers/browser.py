"""Headless Chromium for tests, driven over the Chrome DevTools protocol (CDP).

:func:`find_or_install_chromium` finds Debian's ``chromium`` or, as root with apt, installs it (the
test set-up installs what the tests need); :class:`Browser` starts it with a fresh profile and talks
CDP over a WebSocket with Tornado's client (already a dependency), so no browser download and no
extra package is needed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tornado.websocket import WebSocketClientConnection, websocket_connect

from tests.helpers.debian import apt_install

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 30.0
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0")

_install_lock = threading.Lock()
_install_result: tuple[str | None, str] | None = None


def _find() -> str | None:
    explicit = os.environ.get("SBUSR_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def find_or_install_chromium() -> tuple[str | None, str]:
    """``(path, "")``, or ``(None, why not)`` when Chromium is missing and cannot be installed here."""
    global _install_result
    with _install_lock:
        if _install_result is not None:
            return _install_result
        path = _find()
        if path is None:
            path, why = None, _install()
            if not why:
                path = _find()
                why = "" if path else "apt-get installed chromium but no chromium binary is on PATH"
        else:
            why = ""
        _install_result = (path, why)
        return _install_result


def _install() -> str:
    return apt_install("chromium", "chromium", "fonts-dejavu-core")


class CdpError(RuntimeError):
    """Chromium answered a CDP command with an error, or did not answer."""


class Browser:
    """One headless Chromium with one page; every method blocks until Chromium has answered."""

    def __init__(self, executable: str, width: int = 1360, height: int = 1000) -> None:
        self._profile = tempfile.mkdtemp(prefix="sbusr-chromium-")
        self._stderr = tempfile.NamedTemporaryFile(prefix="sbusr-chromium-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([executable, *FLAGS, f"--user-data-dir={self._profile}",
                                      f"--window-size={width},{height}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=self._stderr, stdin=subprocess.DEVNULL)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cdp", daemon=True)
        self._thread.start()
        self._ws: WebSocketClientConnection | None = None
        self._ids = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        try:
            port = self._devtools_port()
            self._ws = self._run(self._connect(self._page_socket(port)))
            self.command("Page.enable")
            self.command("Runtime.enable")
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ start-up

    def log(self) -> str:
        return Path(self._stderr.name).read_text(errors="replace")

    def _devtools_port(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", self.log())
            if found:
                return int(found.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"chromium did not open its DevTools port within {START_TIMEOUT} s:\n"
                           f"{self.log()[-3000:]}")

    @staticmethod
    def _page_socket(port: int) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
                targets = json.load(response)
            pages = [t for t in targets if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
            if time.monotonic() > deadline:
                raise RuntimeError(f"chromium shows no page target: {targets}")
            time.sleep(0.1)

    # ------------------------------------------------------------------ CDP

    def _run(self, coro: Any, timeout: float = COMMAND_TIMEOUT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _connect(self, url: str) -> WebSocketClientConnection:
        """Connect on the CDP thread's loop and start reading there."""
        ws = await websocket_connect(url, max_message_size=64 * 1024 * 1024)
        self._reader = asyncio.get_running_loop().create_task(self._read(ws))
        return ws

    async def _read(self, ws: WebSocketClientConnection) -> None:
        while True:
            raw = await ws.read_message()
            if raw is None:  # closed
                for fut in self._waiting.values():
                    if not fut.done():
                        fut.set_exception(CdpError("chromium closed the DevTools connection"))
                return
            message = json.loads(raw)
            fut = self._waiting.pop(message.get("id", -1), None)
            if fut is not None and not fut.done():
                fut.set_result(message)

    async def _command(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self._ws is not None
        self._ids += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[self._ids] = fut
        await self._ws.write_message(json.dumps({"id": self._ids, "method": method, "params": params}))
        return await fut

    def command(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one CDP command and return its ``result``."""
        try:
            answer = self._run(self._command(method, params))
        except TimeoutError:
            raise CdpError(f"no answer to {method} within {COMMAND_TIMEOUT} s") from None
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    # ------------------------------------------------------------------ what tests use

    def navigate(self, url: str) -> None:
        self.command("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'",
                      "the page to load")

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        result = self.command("Runtime.evaluate", expression=expression, returnByValue=True,
                              awaitPromise=True)
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r} raised: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 30.0) -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        return wait_until(lambda: self.evaluate(expression), what, timeout)

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (not only the window)."""
        size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        width, height = int(size[0]), int(size[1])
        self.command("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                     mobile=False)
        data = self.command("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        if self._ws is not None:
            self._loop.call_soon_threadsafe(self._ws.close)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        shutil.rmtree(self._profile, ignore_errors=True)
        self._stderr.close()
        Path(self._stderr.name).unlink(missing_ok=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)
