"""sbusr-init: the project it writes passes its own tests, and sbusr-server serves it as written
(its config starts a development bus of its own on the stated port)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from sbusr import scaffold
from sbusr.testing.ipsc import FakeIpsc
from sbusr.testing.processes import SERVER_START_TIMEOUT, ReadyPipe, terminate

BIN = Path(sys.executable).parent


def sbusr_init(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "sbusr-init"), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def project(tmp_path):
    port = scaffold.free_port()
    done = sbusr_init(str(tmp_path / "ivr-methods"), "--port", str(port))
    assert done.returncode == 0, done.stderr
    return tmp_path / "ivr-methods", port


def test_the_project_has_an_example_its_tests_a_config_and_a_readme(project):
    root, port = project
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "README.md", "methods/greeting.py", "pytest.ini", "sbusr.conf", "tests/test_greeting.py"]
    example = ast.parse((root / "methods" / "greeting.py").read_text())
    assert ast.get_docstring(example)
    [cls] = [n for n in example.body if isinstance(n, ast.ClassDef)]
    methods = [n for n in cls.body if isinstance(n, ast.FunctionDef)]
    assert methods and all(ast.get_docstring(m) and m.returns is not None for m in methods)
    assert all(a.annotation is not None for m in methods for a in m.args.args[2:])  # after self, ctxt
    assert "from sbusr.testing import" in (root / "tests" / "test_greeting.py").read_text()
    assert f"127.0.0.1:{port}/" in (root / "sbusr.conf").read_text()
    assert f"--port {port}" in (root / "README.md").read_text()


def test_its_tests_pass_with_pytest(project):
    root, _port = project
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "5 passed" in done.stdout


def test_sbusr_server_serves_the_example_through_a_real_bus(project, tmp_path):
    root, port = project
    log = tmp_path / "server.log"
    ready = ReadyPipe()
    with open(log, "wb") as out:
        server = subprocess.Popen([str(BIN / "sbusr-server"), "--config-file", str(root / "sbusr.conf")],
                                  cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=ready.env(),
                                  pass_fds=ready.pass_fds)
    try:
        # serving and registered on its own (embedded) bus
        ready.wait(server, "ready", SERVER_START_TIMEOUT, "sbusr-server", log.read_text)
        ipsc = FakeIpsc("127.0.0.1", port, unit=0, process=3, server=(19, 1)).start()
        try:
            assert ipsc.call("greeting.hello", ["Li Lei"])["result"] == {"text": "Hello, Li Lei!"}
            assert ipsc.call("greeting.add", {"a": 2, "b": 3})["result"] == 5
            assert ipsc.call("greeting.hello", [""])["error"]["code"] == 4001
        finally:
            ipsc.stop()
    finally:
        ready.close()
        assert terminate(server, 30) == 0, log.read_text()


def test_an_existing_project_is_not_overwritten(project):
    root, _port = project
    (root / "methods" / "greeting.py").write_text("# mine\n")
    done = sbusr_init(str(root))
    assert done.returncode == 1 and "already has" in done.stderr
    assert (root / "methods" / "greeting.py").read_text() == "# mine\n"
    assert sbusr_init(str(root.parent / "other"), "--port", "70000").returncode == 1
