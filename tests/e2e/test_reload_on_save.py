"""[endpoints] watch: a save is picked up without a signal; a file that does not import changes nothing."""

from __future__ import annotations

import textwrap

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
    """Save as most editors do, in one step (a rename); a plain write is a truncation and a write,
    which a busy machine can spread over two change batches and so two reloads."""
    temp = path.with_name(f".{path.name}.swp")
    temp.write_text(text)
    temp.replace(path)


def watching(stack: Stack, folder) -> int:
    """Wait until the server's watcher reacts to saves; the log offset after its probe reload.

    The server logs that it watches before the watch is in place: a save made at once can go
    unseen. So a probe file is saved until the server reports it, then its reload is awaited.
    """
    probe = folder / "probe_watch.py"
    for attempt in range(30):
        save(probe, f"ATTEMPT = {attempt}\n")
        try:
            wait_for(lambda: "endpoint files saved (probe_watch.py)" in stack.server.output(),
                     "the probe save", timeout=3)
            break
        except AssertionError:
            continue
    out = stack.server.output()
    start = out.index("endpoint files saved (probe_watch.py)")
    wait_for(lambda: (o := stack.server.output()[start:]).count("reloaded endpoints")
             >= o.count("endpoint files saved ("), "the probe's reload")
    return len(stack.server.output())


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_saved_file_is_served_without_a_signal_and_a_broken_one_is_not(tmp_path, mode, on_session_bus):
    folder = tmp_path / "methods"
    folder.mkdir()
    source = folder / "ep.py"
    source.write_text(VERSION.format(version="v1"))
    config = {"endpoints": {"watch": True}, "execution": {"mode": mode, "workers": 2}}
    with Stack([folder], config, workdir=tmp_path, **on_session_bus) as stack:
        assert stack.ipsc.call("ep.version")["result"] == "v1"
        offset = watching(stack, folder)
        save(source, VERSION.format(version="v2"))
        wait_for(lambda: stack.server.output()[offset:].count("reloaded endpoints") == 1, "the reload")
        # every worker serves it (today's process-mode workers load an endpoint file on first use)
        assert [stack.ipsc.call("ep.version")["result"] for _ in range(6)] == ["v2"] * 6
        reloads = stack.server.output().count("reloading")

        save(source, VERSION.format(version="v3") + "\nimport no_such_module_anywhere\n")
        wait_for(lambda: "does not import" in stack.server.output(), "the error for the broken save")
        log = stack.server.output()
        assert log.count("does not import") == 1
        assert "ModuleNotFoundError: No module named 'no_such_module_anywhere'" in log
        assert log.count("reloading") == reloads  # no reload was attempted
        # the previous code keeps serving
        assert [stack.ipsc.call("ep.version")["result"] for _ in range(6)] == ["v2"] * 6

        save(folder / "extra.py", VERSION.format(version="x").replace('"ep"', '"extra"'))
        save(source, VERSION.format(version="v4"))
        wait_for(lambda: stack.ipsc.call("ep.version").get("result") == "v4"
                 and stack.ipsc.call("extra.version").get("result") == "x", "the fixed code to serve")


def test_changed_files_are_checked_before_the_reload(tmp_path):
    calls = []
    watcher = ReloadOnSave([tmp_path], lambda: calls.append("reload"))
    good = tmp_path / "good.py"
    good.write_text("X = 1\n")
    bad = tmp_path / "bad.py"
    bad.write_text("def broken(:\n")
    assert watcher.changed([str(good)]) is True
    assert watcher.changed([str(good), str(bad)]) is False
    assert watcher.changed([str(tmp_path / "deleted.py")]) is True
    assert calls == ["reload", "reload"]


def test_watch_is_off_by_default():
    from oslo_config import cfg

    from sbusr import opts

    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], default_config_files=[])
    assert conf.endpoints.watch is False
