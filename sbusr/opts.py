"""Every sbusr configuration option, in one place, for oslo.config and oslo-config-generator.

``oslo-config-generator --namespace sbusr`` reads :func:`list_opts` through the
``oslo.config.opts`` entry point; ``etc/sbusr.conf.sample`` is its output.
"""

from __future__ import annotations

import os

from oslo_config import cfg

#: oslo-config-generator namespaces of every option sbusr's processes read; the sample config and
#: the reload report cover the same set (etc/oslo-config-generator/sbusr.conf lists them too).
NAMESPACES = ("sbusr", "oslo.log", "oslo.messaging")

smartbus_opts = [
    cfg.StrOpt("backend", default="native", choices=["native", "vendor"],
               help="SmartBus client implementation: the pure-Python client (native) or the "
                    "vendor's libbusnetcli.so loaded through ctypes (vendor, x86_64 Linux only)."),
    cfg.StrOpt("library_path",
               help="Path of libbusnetcli.so for the vendor backend (relative to the config file's "
                    "folder). Default: the copy shipped in the installed hesong-ipsc-busnetcli wheel."),
    cfg.HostAddressOpt("host", default="127.0.0.1",
                       help="SmartBus master host, used when transport_url names no host."),
    cfg.PortOpt("port", default=8089, help="SmartBus master port, used when transport_url names none."),
    cfg.IntOpt("unit_id", default=19, min=0, max=47,
               help="This process's SmartBus unit id (net clients use 16-47; units 0-15 are IPSC "
                    "nodes). transport_url's ?unit_id= overrides it."),
    cfg.IntOpt("client_id", default=1, min=0, max=127,
               help="This process's SmartBus client id. transport_url's ?client_id= overrides it."),
    cfg.IntOpt("client_type", default=19, min=-128, max=127,
               help="This process's SmartBus client type. transport_url's ?client_type= overrides it."),
    cfg.StrOpt("add_info", default="sbusr",
               help="Text sent with the registration; other clients see it in global-connect events."),
    cfg.IntOpt("notify_ttl", mutable=True, default=10000, min=0,
               help="Lifetime (ms) of the NOTIFY messages that carry JSON-RPC replies to IPSC flows."),
    cfg.BoolOpt("embedded_bus", default=False,
                help="Start a development SmartBus in this process on the transport URL's host and "
                     "port before connecting (for a machine with no IPSC; never in production). When "
                     "the port is taken, the server joins the bus listening there, with a WARNING."),
    cfg.StrOpt("encoding", default="gbk",
               help="Text encoding of SmartBus string fields (project, title, add_info) and the "
                    "fallback for JSON payloads that are not valid UTF-8."),
    cfg.FloatOpt("connect_timeout", default=10.0, min=0,
                 help="Seconds to wait for the first registration before start-up continues anyway "
                      "(the client keeps reconnecting in the background)."),
    cfg.IntOpt("max_request_size", default=1024 * 1024, min=1024,
               help="Largest JSON-RPC request body (bytes) accepted from the bus; larger requests "
                    "are answered with an invalid-request error."),
]

endpoint_opts = [
    cfg.ListOpt("directories", mutable=True, default=[],
                help="Folders whose *.py files are loaded as endpoint modules. A relative folder is "
                     "relative to the folder of the config file that names it."),
    cfg.ListOpt("modules", mutable=True, default=[],
                help="Importable module names loaded as endpoint modules."),
    cfg.BoolOpt("entry_points", mutable=True, default=True,
                help="Load endpoint modules contributed by installed packages through the "
                     "'sbusr.endpoints' entry point group (the built-in endpoints come this way)."),
    cfg.ListOpt("legacy_packages", mutable=True, default=[],
                help="Original-sbusr style 'methods' packages served unchanged: the JSON-RPC method "
                     "a.b.c calls <package>.a.b.c (functions, classmethods and staticmethods)."),
    cfg.BoolOpt("watch", mutable=True, default=False,
                help="Reload the endpoints (as SIGHUP does) about a second after a *.py file in one "
                     "of the directories is saved; a reload that changes the directories moves the "
                     "watch. A saved file that does not import is reported and the previous code "
                     "keeps serving. For development machines."),
]

execution_opts = [
    cfg.StrOpt("mode", default="thread", choices=["thread", "process"],
               help="Run methods in threads (light I/O methods) or in a pool of worker processes "
                    "(isolation, hard time limits)."),
    cfg.IntOpt("workers", default=8, min=1, help="Threads or worker processes running methods."),
    cfg.IntOpt("threads", default=1, min=1,
               help="Process mode: request packets one worker process runs at a time. 1 (the "
                    "default) means a time limit or a crash concerns exactly one call."),
    cfg.IntOpt("max_tasks_per_child", mutable=True, default=0, min=0,
               help="Process mode: recycle a worker (re-importing endpoint code) after this many "
                    "calls; 0 = never."),
    cfg.IntOpt("queue_size", default=1000, min=1,
               help="Requests allowed to wait for a worker; beyond that callers get 'server busy' "
                    "at once."),
    cfg.FloatOpt("call_timeout", mutable=True, default=30.0, min=0,
                 help="Default per-call time limit in seconds (0 = none)."),
    cfg.StrOpt("worker_init", mutable=True,
               help="'module:function' called once in every new worker process (thread mode: once "
                    "in the server process) to open DB connections and the like. With one call at a "
                    "time (process mode's threads = 1, thread mode's workers = 1) it runs on the "
                    "thread that runs the methods."),
]

server_opts = [
    cfg.StrOpt("topic", default="sbusr", help="oslo.messaging topic the RPC server listens on."),
    cfg.FloatOpt("graceful_timeout", mutable=True, default=10.0, min=0,
                 help="Seconds to let in-flight calls finish on SIGTERM/SIGINT before exiting."),
    cfg.BoolOpt("expose_tracebacks", default=False,
                help="Put the Python traceback in JSON-RPC error data (also on with --debug)."),
    cfg.StrOpt("decimal_as", default="number", choices=["number", "string"],
               help="How a method's Decimal results reach the flow: 'number' writes a JSON number with "
                    "exactly the Decimal's digits (1.00 stays 1.00), 'string' writes its text (\"1.00\")."),
]

spooler_opts = [
    cfg.StrOpt("directory", default="",
               help="Folder holding the spooled jobs of @spool functions (queue, running, failed). "
                    "Empty: no spooler processes, and .spool() raises an error."),
    cfg.IntOpt("processes", default=1, min=1,
               help="Spooler processes running jobs, each one job at a time, oldest first."),
    cfg.IntOpt("max_retries", default=3, min=0,
               help="Times a job may raise SpoolRetry before it moves to the failed area."),
    cfg.FloatOpt("retry_delay", default=60.0, min=0,
                 help="Seconds before a retried job runs again when SpoolRetry gives no 'after'."),
]

api_opts = [
    cfg.HostAddressOpt("listen_host", default="127.0.0.1", help="Address the HTTP API listens on."),
    cfg.PortOpt("listen_port", default=8080, help="Port the HTTP API listens on."),
    cfg.StrOpt("auth_token", mutable=True, default="", secret=True,
               help="Bearer token required on every route except /health; empty = no auth."),
    cfg.FloatOpt("flow_ack_timeout", default=15.0, min=0.1,
                 help="Seconds to wait for an IPSC to acknowledge a flow start."),
    cfg.FloatOpt("flow_result_timeout", default=60.0, min=0.1,
                 help="Seconds to wait for a flow's result when the request asks to wait."),
    cfg.IntOpt("max_body_size", default=64 * 1024, min=256, help="Largest accepted request body (bytes)."),
    cfg.IntOpt("client_id", min=0, max=127,
               help="SmartBus client id of the API process (default: transport URL client_id + 1)."),
    cfg.IntOpt("unit_id", min=16, max=47,
               help="SmartBus unit id of the API process (default: the transport URL's)."),
    cfg.IntOpt("server_unit_id", min=0, max=47,
               help="Unit id of the sbusr-server that /sys/reset reloads (default: the transport URL's)."),
    cfg.IntOpt("server_client_id", min=0, max=127,
               help="Client id of the sbusr-server that /sys/reset reloads (default: the transport "
                    "URL's)."),
    cfg.FloatOpt("reset_timeout", default=60.0, min=0.1,
                 help="Seconds to wait for sbusr-server to finish a reload."),
    cfg.BoolOpt("metrics_need_token", default=False,
                help="Require the bearer token (auth_token) on GET /metrics too; by default metrics, "
                     "like /health, need none."),
]

metrics_opts = [
    cfg.HostAddressOpt("host", default="127.0.0.1",
                       help="Address sbusr-server serves Prometheus metrics on (GET /metrics)."),
    cfg.PortOpt("port", default=9465,
                help="Port of sbusr-server's metrics listener; 0 = no listener. (sbusr-api serves "
                     "/metrics on its own HTTP port.)"),
]

sql_opts = [
    cfg.ListOpt("databases", mutable=True, default=[], secret=True,
                help="Databases of SQL methods, each NAME:URL with a SQLAlchemy-style URL, e.g. "
                     "crm:postgresql://ivr@db.example/crm, local:sqlite:////var/lib/sbusr/local.db. "
                     "postgresql:// uses psycopg (v3), mysql:// and mariadb:// use PyMySQL; a URL that "
                     "names its driver (dialect+driver://) keeps it. Secret: URLs may hold passwords."),
    cfg.ListOpt("directories", mutable=True, default=[],
                help="Folders of NAME.sql files (aiosql's format): the statements of NAME.sql run on "
                     "database NAME and are the JSON-RPC methods NAME.<statement>. A relative folder "
                     "is relative to the folder of the config file that names it."),
    cfg.FloatOpt("connect_timeout", mutable=True, default=5.0, min=1,
                 help="Seconds to wait for a new database connection before the call gets "
                      "-32051 'database unavailable'."),
]

GROUPS = {
    "smartbus": smartbus_opts,
    "endpoints": endpoint_opts,
    "execution": execution_opts,
    "server": server_opts,
    "spooler": spooler_opts,
    "api": api_opts,
    "metrics": metrics_opts,
    "sql": sql_opts,
}


#: oslo.messaging's own [DEFAULT] options that sbusr users set.  oslo's list_opts() hands out
#: copies equal to the registered originals, so registering them here never conflicts as long
#: as the copies are left unchanged.
_MESSAGING_DEFAULTS = ("transport_url", "executor_thread_pool_size", "rpc_response_timeout")
#: sbusr only speaks SmartBus: the [smartbus] host/port/unit/client options fill in the rest
DEFAULT_TRANSPORT_URL = "smartbus://"


def transport_url(conf: cfg.ConfigOpts) -> str:
    """The configured ``transport_url``; an empty one means the smartbus defaults."""
    return conf.transport_url or DEFAULT_TRANSPORT_URL


def config_relative(conf: cfg.ConfigOpts, value: str, name: str, group: str | None = None) -> str:
    """``value`` of the path option ``[group] name``, a relative path taken from the folder of the
    config file that set it (as operators expect of /etc/sbusr/sbusr.conf), ``~`` expanded.

    Values from the command line or code stay relative to the current directory.
    """
    if not value:
        return value
    value = os.path.expanduser(value)
    if os.path.isabs(value):
        return value
    try:
        location = conf.get_location(name, group)
    except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
        location = None
    if location is not None and location.location is cfg.Locations.user and location.detail:
        return os.path.join(os.path.dirname(os.path.abspath(location.detail)), value)
    return value


def messaging_default_opts() -> list[cfg.Opt]:
    from oslo_messaging import opts as messaging_opts

    for group, group_opts in messaging_opts.list_opts():
        if group is None:
            return [opt for opt in group_opts if opt.name in _MESSAGING_DEFAULTS]
    return []


def _register_messaging_internals(conf: cfg.ConfigOpts) -> None:
    """oslo.messaging registers its tracing/metrics groups on the global CONF only, yet its
    RPCServer reads them from the transport's conf: register them on any other conf too."""
    try:
        from oslo_messaging._metrics import client as metrics
        from oslo_messaging._tracing import client as tracing
    except ImportError:  # older oslo.messaging without these modules
        return
    conf.register_opts(tracing.oslo_messaging_tracing, group="oslo_messaging_tracing")
    conf.register_opts(metrics.oslo_messaging_metrics, group="oslo_messaging_metrics")


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(messaging_default_opts())
    conf.set_default("transport_url", DEFAULT_TRANSPORT_URL)
    _register_messaging_internals(conf)
    for group, opts in GROUPS.items():
        conf.register_opts(opts, group=group)


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Entry point for oslo-config-generator (namespace ``sbusr``): sbusr's own sections.

    The [DEFAULT] transport options come from the ``oslo.messaging`` namespace, with sbusr's
    transport_url default put in by :func:`update_defaults`.
    """
    return [(group, list(opts)) for group, opts in GROUPS.items()]


def all_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """What :func:`register_opts` registers, by section ("DEFAULT" for the messaging options)."""
    return [("DEFAULT", messaging_default_opts()), *list_opts()]


def update_defaults() -> None:
    """``oslo.config.opts.defaults`` hook of the generator: the sample shows transport_url = smartbus://.

    oslo.messaging offers no public setter for this default; its option list is the one the
    generator copies, so the default is set there (only the generator process calls this).
    """
    from oslo_messaging import transport

    cfg.set_defaults(getattr(transport, "_transport_opts", []), transport_url=DEFAULT_TRANSPORT_URL)
