"""A real MariaDB for tests: Debian's ``mariadb-server``, a temporary data folder on a free port.

:func:`find_or_install_mariadb` finds ``mariadbd`` or, as root with apt, installs Debian's
``mariadb-server`` (about 25 MB to download; the test set-up installs what the tests need). As root
the server runs as the ``mysql`` system user the package creates. Each :class:`MariaDbServer` has
its own folder and port (one per pytest-xdist worker) and runs in the foreground as a child of the
test process.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from typing import Any

import pymysql

from sbusr.testing.processes import free_port
from sbusr.util.procs import die_with_parent
from tests.helpers.debian import apt_install

START_TIMEOUT = 90.0
STOP_TIMEOUT = 60.0
SYSTEM_USER = "mysql"

_install_lock = threading.Lock()
_install_result: tuple[str | None, str] | None = None


def _find() -> str | None:
    for name in ("mariadbd", "mysqld"):
        for folder in ("/usr/sbin", "/usr/bin"):
            path = os.path.join(folder, name)
            if os.access(path, os.X_OK):
                return path
    return None


def _install() -> str:
    return apt_install("mariadb-server", "mariadb-server")


def find_or_install_mariadb() -> tuple[str | None, str]:
    """``(mariadbd path, "")``, or ``(None, why not)`` when it is missing and cannot be installed."""
    global _install_result
    with _install_lock:
        if _install_result is None:
            found = _find()
            why = ""
            if found is None:
                why = _install()
                found = _find() if not why else None
                if found is None and not why:
                    why = "apt-get installed mariadb-server but no mariadbd exists"
            _install_result = (found, why)
        return _install_result


class MariaDbServer:
    """A throw-away server with a database ``sbusr``; root logs in over TCP without a password."""

    host = "127.0.0.1"

    def __init__(self, mariadbd: str, database: str = "sbusr") -> None:
        self.mariadbd = mariadbd
        self.database = database
        self.port = free_port(self.host)
        self.folder = tempfile.mkdtemp(prefix="sbusr-mariadb-")
        self.data = os.path.join(self.folder, "data")
        self.log_path = os.path.join(self.folder, "mariadb.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self._user: list[str] = []
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:  # the server runs as the mysql user from the start (not switching itself)
            user = pwd.getpwnam(SYSTEM_USER)
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self._user = [f"--user={SYSTEM_USER}"]
            self._as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        install_db = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        if install_db is None:
            raise RuntimeError("mariadb-install-db is missing")
        subprocess.run([install_db, "--no-defaults", f"--datadir={self.data}", *self._user,
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True, cwd=self.folder)

    @property
    def url(self) -> str:
        return f"mariadb://root@{self.host}:{self.port}/{self.database}"

    def start(self) -> MariaDbServer:
        log = open(self.log_path, "ab")  # the child keeps writing to it
        try:
            self.proc = subprocess.Popen(
                [self.mariadbd, "--no-defaults", f"--datadir={self.data}",
                 f"--port={self.port}", f"--bind-address={self.host}",
                 f"--socket={os.path.join(self.folder, 'mysqld.sock')}",
                 f"--pid-file={os.path.join(self.folder, 'mysqld.pid')}", "--skip-name-resolve",
                 "--innodb-flush-log-at-trx-commit=0", "--skip-log-bin"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.folder,
                preexec_fn=die_with_parent(os.getpid()), **self._as)  # a killed test run leaves no server
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with self.connect(database=None) as conn, conn.cursor() as cursor:
                    cursor.execute(f"create database if not exists `{self.database}`")
                return self
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mariadbd did not accept connections in {START_TIMEOUT} s:\n"
                                       f"{self.log()}") from None
                time.sleep(0.1)

    def connect(self, database: str | None = "") -> Any:
        """An autocommit connection as root (set-up and checks)."""
        return pymysql.connect(host=self.host, port=self.port, user="root", autocommit=True,
                               database=self.database if database == "" else database, connect_timeout=5)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()[-5000:]
        except OSError:
            return ""
