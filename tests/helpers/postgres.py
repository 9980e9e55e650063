"""A real PostgreSQL for tests: Debian's server binaries, a temporary cluster on a free port.

:func:`find_or_install_postgres` finds ``/usr/lib/postgresql/*/bin`` or, as root with apt, installs
Debian's ``postgresql`` (the test set-up installs what the tests need). PostgreSQL refuses to run as
root, so as root the cluster runs as the ``postgres`` system user. Each :class:`PostgresCluster` has
its own folder and port (one per pytest-xdist worker), trusts local TCP logins and runs the
postmaster in the foreground as a child of the test process, so a test can stop and start it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from typing import Any

import psycopg

from sbusr.testing.processes import free_port
from sbusr.util.procs import die_with_parent
from tests.helpers.debian import apt_install

START_TIMEOUT = 90.0
STOP_TIMEOUT = 60.0
SYSTEM_USER = "postgres"

_install_lock = threading.Lock()
_install_result: tuple[str | None, str] | None = None


def _find() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return os.path.dirname(found[-1]) if found else None


def _install() -> str:
    return apt_install("PostgreSQL", "postgresql")


def find_or_install_postgres() -> tuple[str | None, str]:
    """``(bin folder, "")``, or ``(None, why not)`` when PostgreSQL is missing and cannot be installed."""
    global _install_result
    with _install_lock:
        if _install_result is None:
            found = _find()
            why = ""
            if found is None:
                why = _install()
                found = _find() if not why else None
                if found is None and not why:
                    why = "apt-get installed postgresql but no /usr/lib/postgresql/*/bin/postgres exists"
            _install_result = (found, why)
        return _install_result


class PostgresCluster:
    """A throw-away cluster: ``start()``, ``stop()`` (fast shutdown), ``start()`` again, ``destroy()``."""

    host = "127.0.0.1"

    def __init__(self, bin_dir: str, database: str = "sbusr") -> None:
        self.bin_dir = bin_dir
        self.database = database
        self.port = free_port(self.host)
        self.folder = tempfile.mkdtemp(prefix="sbusr-pg-")
        self.data = os.path.join(self.folder, "data")
        self.log_path = os.path.join(self.folder, "postgres.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:  # PostgreSQL refuses root: the cluster belongs to the postgres user
            user = pwd.getpwnam(SYSTEM_USER)
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self._as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        subprocess.run([os.path.join(bin_dir, "initdb"), "-D", self.data, "-A", "trust", "-U", "postgres",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, cwd=self.folder,
                       **self._as)

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    @property
    def url(self) -> str:
        """The test database's SQLAlchemy-style URL (what ``[sql] databases`` takes)."""
        return f"postgresql://postgres@{self.host}:{self.port}/{self.database}"

    def start(self) -> PostgresCluster:
        """Start the postmaster and return once it accepts connections (creating the database once)."""
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [os.path.join(self.bin_dir, "postgres"), "-D", self.data, "-p", str(self.port),
                 "-k", self.folder, "-c", f"listen_addresses={self.host}", "-c", "fsync=off",
                 "-c", "full_page_writes=off", "-c", "synchronous_commit=off"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.folder,
                preexec_fn=die_with_parent(os.getpid()), **self._as)  # a killed test run leaves no server
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with psycopg.connect(self.admin_url, connect_timeout=5, autocommit=True) as conn:
                    exists = conn.execute("select 1 from pg_database where datname = %s",
                                          (self.database,)).fetchone()
                    if not exists:
                        conn.execute(f'create database "{self.database}"')
                return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"postgres did not accept connections in {START_TIMEOUT} s:\n"
                                       f"{self.log()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: sessions are ended, as when a database server is restarted)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def connect(self) -> psycopg.Connection[Any]:
        """An autocommit connection to the test database as the superuser (set-up and checks)."""
        return psycopg.connect(self.url, connect_timeout=10, autocommit=True)

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()[-5000:]
        except OSError:
            return ""
