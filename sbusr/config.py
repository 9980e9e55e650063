"""Reading, checking and re-reading sbusr's configuration files (start-up and reload).

* :func:`load` parses the command line and the config files the way OpenStack services do:
  without ``--config-file``, oslo.config looks for ``sbusr.conf`` and ``<prog>.conf`` in
  ``~/.sbusr/``, ``~/``, ``/etc/sbusr/``, ``/etc/`` (:func:`search_paths`).
* :func:`problems` turns every bad value into one line an operator can act on (section, option,
  file, reason), refuses values that hold an inline comment (oslo.config would keep it in the
  value) and any transport but ``smartbus://``; :func:`unknown_options` names
  options in sbusr's sections that nothing reads, with the closest known name.
* :class:`Reloader` re-reads the files of a running process (SIGHUP, ``sys.reload``): the new files
  are checked first (a bad edit changes nothing), then ``ConfigOpts.mutate_config_files()`` applies
  the ``mutable=True`` options; the result says which options changed and which need a restart.
"""

from __future__ import annotations

import difflib
import functools
import glob
import logging
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import oslo_messaging
from oslo_config import cfg
from oslo_log import log

import sbusr
from sbusr import opts

LOG = logging.getLogger(__name__)

PROJECT = "sbusr"
#: the only transport sbusr-server and sbusr-api serve
SCHEME = "smartbus"

Key = tuple[str, str]  # (section, option); section "DEFAULT" for [DEFAULT]


class ConfigError(Exception):
    """A configuration that cannot be used; ``str()`` is one line for the operator."""


# --------------------------------------------------------------------------- loading

def search_paths(prog: str) -> list[str]:
    """The files oslo.config's default search tries, in its order (its documented list)."""
    folders = [os.path.expanduser(f"~/.{PROJECT}"), os.path.expanduser("~"), f"/etc/{PROJECT}", "/etc"]
    for env in ("SNAP_COMMON", "SNAP"):
        if os.environ.get(env):
            folders.append(os.path.join(os.environ[env], "etc", PROJECT))
    names = [PROJECT] + ([prog] if prog and prog != PROJECT else [])
    return [os.path.join(folder, f"{name}.conf") for name in names for folder in folders]


def register(conf: cfg.ConfigOpts) -> None:
    """Every option a sbusr process reads: oslo.log's, oslo.messaging's [DEFAULT] ones, sbusr's."""
    log.register_options(conf)
    opts.register_opts(conf)


def load(argv: Sequence[str] | None, prog: str, description: str | None = None,
         conf: cfg.ConfigOpts | None = None,
         default_config_files: list[str] | None = None,
         default_config_dirs: list[str] | None = None) -> cfg.ConfigOpts:
    """Register the options and parse ``argv`` and the config files (raises cfg.Error).

    ``default_config_files=None`` is oslo.config's search; a process with neither
    ``--config-file`` nor a file found is refused with the list of paths that were tried.
    """
    conf = conf if conf is not None else cfg.ConfigOpts()
    register(conf)
    conf(list(argv) if argv is not None else None, project=PROJECT, prog=prog, version=sbusr.__version__,
         description=description, default_config_files=default_config_files,
         default_config_dirs=default_config_dirs)
    if not conf.config_file and not config_dir_files(conf):
        raise ConfigError("no configuration file: give --config-file FILE, or create one of "
                          + ", ".join(search_paths(prog)))
    return conf


def config_dirs(conf: cfg.ConfigOpts) -> list[str]:
    value = conf.config_dir
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def config_dir_files(conf: cfg.ConfigOpts) -> list[str]:
    """The ``*.conf`` files oslo.config reads from ``--config-dir`` folders (sorted, as it does)."""
    return [path for folder in config_dirs(conf)
            for path in sorted(glob.glob(os.path.join(folder, "*.conf")))]


def files(conf: cfg.ConfigOpts) -> list[str]:
    """Every config file this process reads, in reading order."""
    return [os.path.abspath(path) for path in [*(conf.config_file or []), *config_dir_files(conf)]]


# --------------------------------------------------------------------------- checking

_LOCATION = re.compile(r"Value for option (?P<opt>\S+) from LocationInfo\(.*?detail='(?P<file>[^']*)'\) "
                       r"is not valid: (?P<why>.*)", re.S)


def _describe_value_error(section: str, name: str, exc: Exception) -> str:
    """``[execution] mode in /etc/sbusr/sbusr.conf: Valid values are ...`` (no LocationInfo repr)."""
    text = str(exc)
    match = _LOCATION.search(text)
    if match:
        return f"[{section}] {name} in {match['file']}: {match['why'].strip()}"
    text = re.sub(r" from LocationInfo\(.*?\)", "", text)
    return f"[{section}] {name}: {text}"


def own_options() -> Iterator[tuple[str, cfg.Opt]]:
    """(section, option) for every option sbusr declares (its [DEFAULT] ones included)."""
    for group, group_opts in opts.all_opts():
        for opt in group_opts:
            yield group, opt


#: `` #`` or `` ;`` after a value: meant as a comment, but oslo.config (like Python's configparser)
#: has no inline comments and keeps it in the value
_INLINE_COMMENT = re.compile(r"\s[#;]")


def inline_comments(conf: cfg.ConfigOpts) -> dict[Key, str]:
    """``(section, option dest)`` -> one line, for every value in the files that holds an inline comment."""
    found: dict[Key, str] = {}
    for path in files(conf):
        for section, options in _sections_in(path).items():
            for name, values in options.items():
                for value in values:
                    match = _INLINE_COMMENT.search(value) if isinstance(value, str) else None
                    if match is None:
                        continue
                    mark = value[match.start() + 1]
                    found.setdefault((section, name.replace("-", "_")), (
                        f"[{section}] {name} in {path}: the value {value!r} holds an inline comment; "
                        f"oslo.config keeps everything after '=' (the {mark!r} and what follows too), so "
                        f"put the comment on a line of its own"))
    return found


def problems(conf: cfg.ConfigOpts) -> list[str]:
    """One line per reason ``conf`` cannot be used; empty when it can."""
    commented = inline_comments(conf)
    found: list[str] = list(commented.values())
    for section, opt in own_options():
        if (section, opt.dest) in commented:
            continue  # said above, in words that name the cause
        try:
            getattr(conf if section == "DEFAULT" else conf[section], opt.dest)
        except (cfg.Error, ValueError) as exc:  # oslo.config checks values lazily, on first use
            found.append(_describe_value_error(section, opt.name, exc))
    if not found:
        found.extend(transport_problems(conf))
        found.extend(sql_problems(conf))
    return found


def sql_problems(conf: cfg.ConfigOpts) -> list[str]:
    """Bad ``[sql] databases`` entries (names, URLs, dialects, drivers not installed)."""
    entries = list(conf.sql.databases)
    if not entries:  # no SQLAlchemy import for a server without SQL methods
        return []
    from sbusr.sql import databases

    return databases.parse(entries)[1]


def transport_problems(conf: cfg.ConfigOpts) -> list[str]:
    from sbusr.transport.url import client_config_from_url  # the transport's URL rules

    text = opts.transport_url(conf)
    scheme = text.split(":", 1)[0] if "://" in text else text
    try:
        url = oslo_messaging.TransportURL.parse(conf, text)
    except oslo_messaging.InvalidTransportURL as exc:
        return [f"bad transport_url: {exc}"]
    if url.transport != SCHEME:
        hint = difflib.get_close_matches(url.transport or "", [SCHEME], n=1)
        return [f"transport_url {scheme}:// is not supported: sbusr serves SmartBus only, write "
                f"smartbus://host:port/?unit_id=..&client_id=.."
                + (f" (did you mean {SCHEME}://?)" if hint else "")]
    try:
        client_config_from_url(conf, url)
    except oslo_messaging.InvalidTransportURL as exc:
        return [f"bad transport_url: {exc}"]
    return []


def _sections_in(path: str) -> dict[str, dict[str, Any]]:
    sections: dict[str, dict[str, Any]] = {}
    try:
        cfg.ConfigParser(path, sections).parse()
    except (OSError, cfg.ParseError):
        return {}  # oslo.config itself reports unreadable files
    return sections


def unknown_options(conf: cfg.ConfigOpts) -> list[str]:
    """Warnings for options in sbusr's sections that nothing reads (typos), with the closest name."""
    own = {group: {opt.dest for opt in group_opts} for group, group_opts in opts.GROUPS.items()}
    for group in own:  # other modules may register options in sbusr's sections (e.g. [metrics])
        try:
            own[group] |= set(conf[group])
        except (cfg.NoSuchOptError, cfg.NoSuchGroupError, KeyError):
            pass
    warnings: list[str] = []
    for path in files(conf):
        for section, options in _sections_in(path).items():
            if section in own:
                for name in options:
                    if name.replace("-", "_") in own[section]:
                        continue
                    close = difflib.get_close_matches(name, sorted(own[section]), n=1)
                    warnings.append(f"unknown option [{section}] {name} in {path} is ignored"
                                    + (f"; did you mean {close[0]}?" if close else ""))
            elif section != "DEFAULT" and section not in _namespace_groups():
                close = difflib.get_close_matches(section, sorted(own), n=1, cutoff=0.8)
                if close:
                    warnings.append(f"unknown section [{section}] in {path} is ignored; "
                                    f"did you mean [{close[0]}]?")
    return warnings


# --------------------------------------------------------------------------- reloading

@functools.cache
def _known_options() -> list[tuple[str, cfg.Opt]]:
    """(section, Opt) of every option in the generator namespaces sbusr uses (opts.NAMESPACES)."""
    from stevedore import named

    manager: named.NamedExtensionManager[Any] = named.NamedExtensionManager(
        "oslo.config.opts", names=list(opts.NAMESPACES), invoke_on_load=True, on_load_failure_callback=None)
    found: list[tuple[str, cfg.Opt]] = []
    for ext in manager.extensions:
        for group, group_opts in ext.obj or ():
            name = getattr(group, "name", group) or "DEFAULT"
            found.extend((name, opt) for opt in group_opts)
    return found


def _namespace_groups() -> set[str]:
    return {section for section, _ in _known_options()}


def _value(conf: cfg.ConfigOpts, section: str, opt: cfg.Opt) -> tuple[bool, Any]:
    """(registered in ``conf``, value); bad values read as their error text."""
    try:
        return True, getattr(conf if section == "DEFAULT" else conf[section], opt.dest)
    except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
        return False, None
    except (cfg.Error, ValueError) as exc:
        return True, f"<invalid: {exc}>"


def _shown(opt: cfg.Opt, value: Any) -> Any:
    """A JSON-friendly value for the reload answer and the log; secrets masked."""
    if opt.secret and value:
        return "****"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_shown(opt, v) if not isinstance(v, (str, int, float, bool)) else v for v in value]
    if isinstance(value, dict):
        return {str(k): v if isinstance(v, (str, int, float, bool)) else str(v) for k, v in value.items()}
    return str(value)


def _label(key: Key) -> str:
    return f"[{key[0]}] {key[1]}"


class _QuietOsloConfig(logging.Filter):
    """oslo.config logs every changed and ignored option itself; :class:`Reloader` says it once."""

    PREFIXES = ("Option ", "Ignoring change to immutable option")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.PREFIXES))


class Reloader:
    """Re-reads the config files of a running process; one per process, made right after start-up."""

    def __init__(self, conf: cfg.ConfigOpts, prog: str) -> None:
        self.conf = conf
        self.prog = prog
        self._files = list(conf.config_file or [])
        self._dirs = config_dirs(conf)
        self._options = _known_options()
        # The files as read at start-up: an option that cannot change live and differs from this
        # is reported "needs a restart" on every reload until the process is restarted.
        self._started = self._snapshot(self._fresh())
        oslo_logger = logging.getLogger("oslo_config.cfg")
        if not any(isinstance(f, _QuietOsloConfig) for f in oslo_logger.filters):
            oslo_logger.addFilter(_QuietOsloConfig())

    def _fresh(self) -> cfg.ConfigOpts:
        """The files as they are now, parsed into a separate ConfigOpts (the running one untouched)."""
        fresh = cfg.ConfigOpts()
        opts.register_opts(fresh)  # as at start-up, so oslo.messaging can add its own later
        for section, opt in self._options:
            try:
                fresh.register_opt(opt, group=None if section == "DEFAULT" else section)
            except cfg.DuplicateOptError:  # two namespaces declare it differently: the first wins
                pass
        fresh([], project=PROJECT, prog=self.prog, default_config_files=self._files,
              default_config_dirs=self._dirs)
        return fresh

    def _from_command_line(self, section: str, opt: cfg.Opt) -> bool:
        try:
            location = self.conf.get_location(opt.dest, None if section == "DEFAULT" else section)
        except (cfg.Error, ValueError):
            return False
        return location is not None and location.location is cfg.Locations.command_line

    def _snapshot(self, conf: cfg.ConfigOpts) -> dict[Key, Any]:
        return {(s, o.dest): v for s, o in self._options if not o.mutable
                for known, v in [_value(conf, s, o)] if known}

    def reload(self) -> dict[str, Any]:
        """Check the files, apply the mutable options; raises ConfigError (nothing changed) if bad."""
        try:
            fresh = self._fresh()
        except cfg.Error as exc:
            raise ConfigError(f"cannot read the configuration: {_one_line(exc)}") from None
        bad = problems(fresh)
        if bad:
            raise ConfigError("; ".join(bad))
        mutable = [(s, o) for s, o in self._options if o.mutable]
        before = {(s, o.dest): _value(self.conf, s, o) for s, o in mutable}
        try:
            self.conf.mutate_config_files()
        except cfg.Error as exc:  # files changed again between the check and now
            raise ConfigError(f"cannot read the configuration: {_one_line(exc)}") from None
        changed: dict[str, list[Any]] = {}
        for section, opt in mutable:
            known, old = before[(section, opt.dest)]
            if not known:
                continue
            _, new = _value(self.conf, section, opt)
            if new != old:
                changed[_label((section, opt.name))] = [_shown(opt, old), _shown(opt, new)]
        now = self._snapshot(fresh)
        restart: dict[str, list[Any]] = {}
        for section, opt in self._options:
            key = (section, opt.dest)
            if key in self._started and key in now and now[key] != self._started[key] \
                    and not self._from_command_line(section, opt):
                restart[_label((section, opt.name))] = [_shown(opt, self._started[key]),
                                                        _shown(opt, now[key])]
        warnings = unknown_options(fresh)
        self._log(changed, restart, warnings)
        return {"changed": changed, "needs_restart": restart, "warnings": warnings, "files": files(self.conf)}

    def _log(self, changed: dict[str, list[Any]], restart: dict[str, list[Any]], warnings: list[str]) -> None:
        where = ", ".join(files(self.conf))
        if changed:
            LOG.info("configuration re-read from %s; changed: %s", where,
                     "; ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items()))
        else:
            LOG.info("configuration re-read from %s; no option changed", where)
        if restart:
            LOG.warning("changed in the configuration but not applied, needs a restart: %s",
                        "; ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in restart.items()))
        for warning in warnings:
            LOG.warning("%s", warning)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
