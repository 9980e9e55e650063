"""Reload on save follows the loaded configuration: folders relative to the config file, folders a
reload adds, ``watch`` turned on and off by a reload; a half-written (empty) file is not reloaded."""

from __future__ import annotations

import signal
import textwrap
import threading

import pytest

from sbusr.server.reload_on_save import ReloadOnSave
from sbusr.testing import Stack
from sbusr.testing.waiting import wait_for

VERSION = textwrap.dedent('''
    import oslo_messaging


    class Ep:
        target = oslo_messaging.Target(namespace="ep")

        def version(self, ctxt):
            return {version!r}
''')


def save(path, text):
    """Save in one step, as most editors do (write a temp file, rename it over the old one)."""
    temp = path.with_name(f".{path.name}.swp")
    temp.write_text(text)
    temp.replace(path)


def save_until(path, text, seen) -> None:
    """Save ``path`` again every 2 s until ``seen()``: a watch starts a moment after it is announced.
    ``seen()`` is asked before each save, so no save follows the one that was seen at once."""
    wait_for(lambda: seen() or save(path, text), f"the save of {path.name} to be seen", interval=2.0)


def reloads_ended(log: str) -> bool:
    """Every reload a save started in ``log`` has ended."""
    return log.count("endpoint files saved") == log.count("reloaded endpoints")


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_the_watch_follows_the_configuration_as_the_readme_walks_through_it(tmp_path, monkeypatch, mode,
                                                                            on_session_bus):
    etc, methods, elsewhere = tmp_path / "etc", tmp_path / "methods", tmp_path / "elsewhere"
    for folder in (etc, methods, elsewhere):
        folder.mkdir()
    monkeypatch.chdir(elsewhere)  # relative folders mean the config file's folder, not the cwd
    source = methods / "ep.py"
    source.write_text(VERSION.format(version="v1"))
    config = {"endpoints": {"watch": True, "directories": ""}, "execution": {"mode": mode, "workers": 1}}
    with Stack(config=config, workdir=etc, **on_session_bus) as stack:
        call = stack.ipsc.call
        assert "nothing to watch until a reload adds a folder" in stack.server.output()

        # the README: add `directories = ../methods` to etc/sbusr.conf and reload
        stack.config["endpoints"]["directories"] = "../methods"
        stack.config_file()
        answer = call("sys.reload")["result"]
        assert answer["config"]["changed"] == {"[endpoints] directories": [[], ["../methods"]]}
        assert answer["config"]["needs_restart"] == {}
        assert call("ep.version")["result"] == "v1"
        wait_for(lambda: f"reloading on save of *.py and *.sql files in {methods}" in stack.server.output(),
                 "the watch on the folder the reload added")

        mark = len(stack.server.output())
        save_until(source, VERSION.format(version="v2"), lambda: call("ep.version").get("result") == "v2")
        # a save before the one seen may have started a reload too: it must not read the truncated file
        wait_for(lambda: reloads_ended(stack.server.output()[mark:]), "the reloads the saves started")

        # an editor that truncates, then writes: the empty file is not loaded
        mark = len(stack.server.output())
        source.write_text("")
        wait_for(lambda: "ep.py is empty" in stack.server.output()[mark:], "the empty file to be noticed")
        assert call("ep.version")["result"] == "v2"
        log = stack.server.output()[mark:]
        assert "endpoint files saved" not in log and "reloaded endpoints" not in log, log
        source.write_text(VERSION.format(version="v3"))
        wait_for(lambda: call("ep.version").get("result") == "v3", "the written file to be served")

        # watch turned off by a reload (SIGHUP): it stops, and says so; nothing needs a restart
        stack.config["endpoints"]["watch"] = False
        stack.config_file()
        mark = len(stack.server.output())
        stack.server.signal(signal.SIGHUP)
        wait_for(lambda: "reloaded endpoints" in stack.server.output()[mark:], "the SIGHUP reload")
        log = stack.server.output()[mark:]
        assert "[endpoints] watch True -> False" in log
        assert "watch turned off" in log
        assert "needs a restart" not in log

        # and on again
        stack.config["endpoints"]["watch"] = True
        stack.config_file()
        answer = call("sys.reload")["result"]
        assert answer["config"]["changed"] == {"[endpoints] watch": [False, True]}
        save_until(source, VERSION.format(version="v4"), lambda: call("ep.version").get("result") == "v4")


def test_a_watcher_moves_to_new_folders_and_can_be_stopped_by_its_own_reload(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    reloads: list[str] = []
    reloaded = threading.Event()
    watcher: ReloadOnSave

    def reload() -> None:
        reloads.append(threading.current_thread().name)
        if len(reloads) == 2:
            watcher.stop()  # as a reload that turns `watch` off does, from the watcher's own thread
        reloaded.set()

    watcher = ReloadOnSave([first], reload, check=lambda path: None)
    watcher.start()
    try:
        save_until(first / "m.py", "X = 1\n", lambda: len(reloads) == 1)
        watcher.watch([second])
        save_until(second / "m.py", "X = 2\n", lambda: len(reloads) == 2)
        assert reloads == ["sbusr-watch", "sbusr-watch"]
        assert not watcher.running
    finally:
        watcher.stop()


def test_empty_files_are_skipped_until_they_have_content(tmp_path):
    calls: list[str] = []
    watcher = ReloadOnSave([tmp_path], lambda: calls.append("reload"), check=lambda path: None)
    empty = tmp_path / "ep.py"
    empty.write_text("")
    assert watcher.changed([str(empty)]) is False
    empty.write_text("X = 1\n")
    assert watcher.changed([str(empty)]) is True
    assert calls == ["reload"]
