"""``[endpoints] watch``: reload the endpoints shortly after an endpoint file is saved.

watchfiles (inotify through Rust's notify crate) reports changes to the ``[endpoints] directories``
(``*.py``) and the ``[sql] directories`` (``*.sql``);
a burst of saves is debounced into one reload. Each saved file is first test-loaded
(:func:`sbusr.dispatch.check_source`): a file that does not import is reported with one ERROR
(with its traceback) and nothing is reloaded, so the previous code keeps serving; the next save
that imports reloads. The reload itself is the server's own (the one SIGHUP runs).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from sbusr import dispatch

LOG = logging.getLogger("sbusr.watch")

#: milliseconds of quiet after a change before reloading (editors write a file in several steps)
DEBOUNCE_MS = 300


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
        self._thread: threading.Thread | None = None
        self.reloads = 0

    def start(self) -> None:
        existing = sorted(f for f in self.folders if os.path.isdir(f))
        if not existing:
            LOG.warning("[endpoints] watch is on but no endpoint directory exists; nothing to watch")
            return
        self._thread = threading.Thread(target=self._run, args=(existing,), name="sbusr-watch", daemon=True)
        self._thread.start()
        LOG.info("reloading on save of *.py and *.sql files in %s", ", ".join(existing))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)

    def _run(self, folders: list[str]) -> None:
        import watchfiles

        try:
            for changes in watchfiles.watch(*folders, debounce=DEBOUNCE_MS, step=50, stop_event=self._stop,
                                            recursive=False, raise_interrupt=False):
                paths = sorted({os.path.abspath(p) for _change, p in changes})
                relevant = [p for p in paths if _is_endpoint_file(p, self.folders)]
                if relevant:
                    self.changed(relevant)
        except Exception:
            LOG.exception("watching the endpoint files failed; reload on save is off")

    def changed(self, paths: list[str]) -> bool:
        """React to saved ``paths``: reload unless one of them does not import; True if reloaded."""
        for path in paths:
            if not os.path.exists(path):
                continue  # deleted: the reload drops its methods
            try:
                self._check(path)
            except (Exception, SystemExit):
                LOG.exception("%s was saved but does not %s; not reloaded, the previous code keeps "
                              "serving", path, "parse" if path.endswith(".sql") else "import")
                return False
        LOG.info("endpoint files saved (%s): reloading", ", ".join(os.path.basename(p) for p in paths))
        self._reload()
        self.reloads += 1
        return True
