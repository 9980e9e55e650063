"""``[endpoints] watch``: reload the endpoints shortly after an endpoint file is saved.

watchfiles (inotify through Rust's notify crate) reports changes to the ``[endpoints] directories``
(``*.py``) and the ``[sql] directories`` (``*.sql``) as the loader resolves them (a relative folder
is relative to its config file); a reload that changes the folders moves the watch
(:meth:`ReloadOnSave.watch`). The folders are watched before :meth:`ReloadOnSave.start` returns, so a
save made as soon as the server reports ready is seen (watchfiles' documented Rust backend is used
directly because its ``watch()`` generator only starts watching once it is first iterated).
Changes are grouped until the folders have been quiet for :data:`QUIET_MS`, so an editor's several
writes make one reload. A saved file that is empty (an editor that truncates, then writes) is
skipped until its content arrives; each other saved file is first test-loaded
(:func:`sbusr.dispatch.check_source`): a file that does not import is reported with one ERROR (with
its traceback) and nothing is reloaded, so the previous code keeps serving; the next save that
imports reloads. The reload itself is the server's own (the one SIGHUP runs).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from sbusr import dispatch

LOG = logging.getLogger("sbusr.watch")

#: milliseconds the folders must stay quiet after a change before the files are looked at
QUIET_MS = 300
#: longest a stream of changes is grouped before the files are looked at anyway
MAX_GROUP_MS = 3000


def _is_endpoint_file(path: str, folders: set[str]) -> bool:
    name = os.path.basename(path)
    return (os.path.dirname(path) in folders and name.endswith((".py", ".sql"))
            and not name.startswith(("_", ".")))


class ReloadOnSave:
    """A thread that calls ``reload()`` after endpoint files change (see the module docstring)."""

    def __init__(self, folders: Iterable[str], reload: Callable[[], Any],
                 check: Callable[[str], None] = dispatch.check_source) -> None:
        self.folders = {os.path.abspath(f) for f in folders}
        self._reload = reload
        self._check = check
        self._stop = threading.Event()
        self._moved = threading.Event()  # the folders changed: end this watch, start the next
        self._thread: threading.Thread | None = None
        self.reloads = 0

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        # events of this thread alone: one stopped from inside (by the reload it ran) ends on its own
        self._stop, self._moved = threading.Event(), threading.Event()
        self._say_what_is_watched()
        first = self._open_watch()
        self._thread = threading.Thread(target=self._run, args=(first, self._stop, self._moved),
                                        name="sbusr-watch", daemon=True)
        self._thread.start()

    def watch(self, folders: Iterable[str]) -> None:
        """Watch ``folders`` from now on (after a reload changed ``[endpoints] directories``)."""
        new = {os.path.abspath(f) for f in folders}
        if new == self.folders:
            return
        self.folders = new
        self._say_what_is_watched()
        self._moved.set()

    def stop(self) -> None:
        self._stop.set()
        self._moved.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():  # a reload it ran may stop it
            thread.join(10.0)

    def _say_what_is_watched(self) -> None:
        existing = sorted(f for f in self.folders if os.path.isdir(f))
        missing = sorted(self.folders - set(existing))
        if existing:
            LOG.info("reloading on save of *.py and *.sql files in %s", ", ".join(existing))
        elif not missing:
            LOG.info("[endpoints] watch is on but [endpoints] directories is empty; nothing to watch "
                     "until a reload adds a folder")
        if missing:
            LOG.warning("[endpoints] watch: %s %s not exist; not watched until a reload after %s created",
                        ", ".join(missing), "does" if len(missing) == 1 else "do",
                        "it is" if len(missing) == 1 else "they are")

    def _open_watch(self) -> Any:
        """A watch on the folders that exist, established now (None when none exists)."""
        from watchfiles._rust_notify import RustNotify

        folders = sorted(f for f in self.folders if os.path.isdir(f))
        if not folders:
            return None
        return RustNotify(folders, False, False, QUIET_MS, False, False)

    def _run(self, watch: Any, stop: threading.Event, moved: threading.Event) -> None:
        try:
            while not stop.is_set():
                if watch is None:
                    moved.wait()
                else:
                    with watch:
                        self._serve(watch, stop, moved)
                if stop.is_set():
                    return
                moved.clear()
                watch = self._open_watch()
        except Exception:
            LOG.exception("watching the endpoint files failed; reload on save is off")

    def _serve(self, watch: Any, stop: threading.Event, moved: threading.Event) -> None:
        """Reload on the changes ``watch`` reports until the folders move or the watcher stops."""
        while not moved.is_set():
            changes = watch.watch(MAX_GROUP_MS, QUIET_MS, 5000, moved)
            if changes == "stop":
                return
            if not isinstance(changes, set):  # "timeout" or "signal": nothing changed
                continue
            paths = sorted({os.path.abspath(p) for _change, p in changes})
            relevant = [p for p in paths if _is_endpoint_file(p, self.folders)]
            if relevant and not stop.is_set():
                self.changed(relevant)

    def changed(self, paths: list[str]) -> bool:
        """React to saved ``paths``: reload unless one of them does not import; True if reloaded."""
        saved: list[str] = []
        for path in paths:
            try:
                size = os.path.getsize(path)
            except OSError:
                saved.append(path)  # deleted: the reload drops its methods
                continue
            if size == 0:
                LOG.info("%s is empty (an editor writing it?); not reloaded until it has content", path)
                continue
            saved.append(path)
            try:
                self._check(path)
            except (Exception, SystemExit):
                LOG.exception("%s was saved but does not %s; not reloaded, the previous code keeps "
                              "serving", path, "parse" if path.endswith(".sql") else "import")
                return False
        if not saved:
            return False
        LOG.info("endpoint files saved (%s): reloading", ", ".join(os.path.basename(p) for p in saved))
        self._reload()
        self.reloads += 1
        return True
