"""``sys.stats``, ``sys.timers``, ``sys.spool`` and ``sys.reload`` are answered where their state lives
(in process mode: by the master, never a worker); the caller sees the same answers in both modes:
single calls, a batch of them, a notification, and params the methods do not take."""

from __future__ import annotations

import pytest

from sbusr.testing import Stack


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_state_calls_answer_alike_in_both_modes(tmp_path, mode):
    with Stack(config={"execution": {"mode": mode, "workers": 1}}, workdir=tmp_path) as stack:
        ipsc = stack.ipsc
        server = stack.server_address
        stats = ipsc.call("sys.stats")["result"]
        assert stats["mode"] == mode and stats["pid"] == stack.server.proc.pid
        assert isinstance(ipsc.call("sys.timers")["result"], list)
        assert "queued" in ipsc.call("sys.spool")["result"]

        batch = [{"jsonrpc": "2.0", "id": "b1", "method": "sys.timers"},
                 {"jsonrpc": "2.0", "method": "sys.spool"},  # a notification: run, not answered
                 {"jsonrpc": "2.0", "id": "b2", "method": "sys.stats", "params": []}]
        answers = ipsc.call_rpc(*server, batch, timeout=30)
        assert [a["id"] for a in answers] == ["b1", "b2"]
        assert isinstance(answers[0]["result"], list) and answers[1]["result"]["mode"] == mode

        refused = ipsc.call("sys.stats", [1])["error"]
        assert refused["code"] == -32602 and "sys.stats" in refused["message"]

        reloaded = ipsc.call("sys.reload", timeout=120)["result"]
        assert "methods" in reloaded and "sys.stats" in reloaded["methods"]
        assert ipsc.call("sys.ping")["result"] == "pong"  # served after the reload too
