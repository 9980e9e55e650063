"""One connection pool per database in each process, made on first use.

SQLAlchemy's QueuePool, sized to the threads of this process that can run methods (thread mode:
``workers``, and as many again for calls abandoned past their limit; process mode: each worker's
``threads``). Every connection is pinged before use (``pool_pre_ping``), so after a database
restart the next call reconnects instead of failing on a dead socket. A forked child forgets the
parent's pools (``os.register_at_fork``): a connection is never shared across a fork.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from sqlalchemy import create_engine
from sqlalchemy.engine import URL, Engine


@dataclass(frozen=True)
class PoolSettings:
    size: int  # connections kept open
    overflow: int  # more connections allowed while all are in use
    connect_timeout: float


def _connect_args(url: URL, settings: PoolSettings) -> dict[str, object]:
    backend = url.get_backend_name()
    seconds = max(1, round(settings.connect_timeout))
    if backend == "postgresql":
        return {"connect_timeout": max(2, seconds), "application_name": "sbusr"}
    if backend in ("mysql", "mariadb"):
        return {"connect_timeout": seconds}
    return {}


class Pools:
    """Engines by (URL, settings): a reload that keeps a database keeps its connections."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: dict[tuple[str, PoolSettings], Engine] = {}

    def engine(self, url: URL, settings: PoolSettings) -> Engine:
        key = (url.render_as_string(hide_password=False), settings)
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                options: dict[str, object] = {"pool_pre_ping": True,
                                              "connect_args": _connect_args(url, settings)}
                if url.get_backend_name() != "sqlite" or url.database not in (None, "", ":memory:"):
                    options.update(pool_size=settings.size, max_overflow=settings.overflow, pool_timeout=30)
                engine = create_engine(url, **options)
                self._engines[key] = engine
            return engine

    def keep_only(self, urls: set[str]) -> None:
        """Close the pools of databases no longer configured (connections in use close on return)."""
        with self._lock:
            for key in [k for k in self._engines if k[0] not in urls]:
                self._engines.pop(key).dispose()

    def forget(self) -> None:
        """In a forked child: drop the parent's pools without touching their sockets."""
        self._lock = threading.Lock()  # another thread of the parent may have held it at the fork
        engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            engine.dispose(close=False)


POOLS = Pools()
os.register_at_fork(after_in_child=POOLS.forget)
