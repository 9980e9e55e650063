"""``smartbus://`` URLs: the transport URL, merged over the ``[smartbus]`` defaults, names one bus identity.

Every program reads it the same way: the server's listener and its process-mode master, the HTTP API
and the start-up checks of the configuration.

URL: ``smartbus://[user:password@]host:port[,slave_host:slave_port]/?unit_id=N&client_id=N&client_type=N``
"""

from __future__ import annotations

import oslo_messaging
from oslo_config import cfg

from sbusr.smartbus.interface import ClientConfig


def _query_int(query: dict[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None


def client_config_from_url(conf: cfg.ConfigOpts, url: oslo_messaging.TransportURL) -> ClientConfig:
    """Merge the transport URL over the ``[smartbus]`` defaults into a client identity."""
    try:
        return _client_config(conf, url)
    except ValueError as exc:
        raise oslo_messaging.InvalidTransportURL(str(url), f"smartbus URL: {exc}") from None


def _client_config(conf: cfg.ConfigOpts, url: oslo_messaging.TransportURL) -> ClientConfig:
    sb = conf.smartbus
    hosts = url.hosts or []
    master = hosts[0] if hosts else None
    slave = hosts[1] if len(hosts) > 1 else None
    if len(hosts) > 2:
        raise ValueError("it takes a master and at most one slave host")
    unknown = set(url.query) - {"unit_id", "client_id", "client_type"}
    if unknown:
        raise ValueError(f"unknown parameters {sorted(unknown)}")
    config = ClientConfig(
        host=(master.hostname if master and master.hostname else sb.host),
        port=(master.port if master and master.port else sb.port),
        unit_id=_query_int(url.query, "unit_id", sb.unit_id),
        client_id=_query_int(url.query, "client_id", sb.client_id),
        client_type=_query_int(url.query, "client_type", sb.client_type),
        slave_host=slave.hostname if slave else None,
        slave_port=(slave.port or sb.port) if slave else None,
        user=(master.username or "") if master else "",
        password=(master.password or "") if master else "",
        add_info=sb.add_info,
        encoding=sb.encoding,
    )
    if not -128 <= config.client_type <= 127 or not 0 <= config.client_id <= 127:
        raise ValueError("client id (0..127) or client type (-128..127) out of range")
    if not 0 <= config.unit_id <= 47:
        raise ValueError(f"unit_id {config.unit_id} is not 0..47")
    return config
