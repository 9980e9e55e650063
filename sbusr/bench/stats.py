"""Figures of one phase from the load generators' answers, and the stdout table."""

from __future__ import annotations

import math
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import psutil

from sbusr.bench import cost


def percentile(sorted_us: Sequence[int], q: float) -> float | None:
    """Nearest-rank percentile in milliseconds of sorted microsecond samples."""
    if not sorted_us:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sorted_us)))
    return round(sorted_us[rank - 1] / 1000.0, 3)


def summarize(answers: list[dict[str, Any]], duration: float) -> dict[str, Any]:
    """Merge the per-process answers of one phase into its figures."""
    lat = sorted(us for a in answers for us in a["lat_us"])
    ok = sum(a["ok"] for a in answers)
    errors = sum(a["errors"] + a["lost"] + a["send_errors"] for a in answers)
    return {
        "calls": ok,
        "calls_per_s": round(ok / duration, 1) if duration > 0 else 0.0,
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "p99_ms": percentile(lat, 99),
        "max_ms": round(lat[-1] / 1000.0, 3) if lat else None,
        "errors": errors,
        "error_replies": sum(a["errors"] for a in answers),
        "lost": sum(a["lost"] for a in answers),
        "send_errors": sum(a["send_errors"] for a in answers),
        "sent": sum(a["sent"] for a in answers),
        # every request sent is one of: a measured reply (calls + error_replies), a reply during the
        # warm-up (early) or after the window (late), or lost (no reply within the drain time)
        "early": sum(a.get("early", 0) for a in answers),
        "late": sum(a.get("late", 0) for a in answers),
        "error_codes": _merge_counts(a.get("error_codes", {}) for a in answers),
    }


def _merge_counts(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for one in counts:
        for key, n in one.items():
            merged[key] = merged.get(key, 0) + n
    return dict(sorted(merged.items()))


def explain_errors(figures: dict[str, Any]) -> str:
    """What the errors of a phase were: error replies by JSON-RPC code, lost requests, failed sends."""
    parts = [f"{n} x {code}" for code, n in figures.get("error_codes", {}).items()]
    if figures.get("lost"):
        parts.append(f"{figures['lost']} lost")
    if figures.get("send_errors"):
        parts.append(f"{figures['send_errors']} send errors")
    return ", ".join(parts)


def _cpu_model() -> str:
    """The CPU's marketing name: psutil does not report it and platform.processor() is empty on most
    Linux systems, so it comes from /proc/cpuinfo there."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _usable_cpus() -> int:
    """CPUs this process may run on (a container or taskset may allow fewer than the machine has)."""
    try:
        return len(psutil.Process().cpu_affinity() or [])
    except (AttributeError, psutil.Error):  # no affinity on this platform
        return psutil.cpu_count() or 0


def machine_info() -> dict[str, Any]:
    return {
        "nproc": _usable_cpus(),
        "cpu_model": _cpu_model(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_at_start": list(psutil.getloadavg()),  # noisy neighbours
    }


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec)


#: the targets of process mode (issue 11), checked by :func:`targets`
TARGET_RATIO = 0.9
TARGET_MASTER_US = 40.0
#: the same target as a share of thread mode's server CPU per call in the same run: issue 11 set 40 µs
#: on a machine where thread mode cost 121 µs per call; CPU per event differs several-fold between
#: machines (a 2-core VM measured 520 µs for thread mode), a share of one run does not
TARGET_MASTER_SHARE = round(40.0 / 121.0, 2)
TARGET_P99_MS = 10.0


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """Process mode against thread mode in one run, at the highest concurrency measured."""
    rows = {(p["mode"], p["name"], p["concurrency"]): p for p in result["phases"]}
    top = max(p["concurrency"] for p in result["phases"])
    thread, process = rows.get(("thread", "null", top)), rows.get(("process", "null", top))
    if not thread or not process:
        return {}
    ratio = process["calls_per_s"] / thread["calls_per_s"] if thread["calls_per_s"] else None
    master = (process.get("cpu_us_per_call") or {}).get("server")
    thread_server = (thread.get("cpu_us_per_call") or {}).get("server")
    share = master / thread_server if master is not None and thread_server else None
    ol = (result.get("open_loop_by_mode") or {}).get("process") or {}
    errors = sum(p["errors"] for p in result["phases"]) + sum(
        o["errors"] for o in (result.get("open_loop_by_mode") or {}).values())
    return {
        "concurrency": top,
        "process_over_thread": round(ratio, 3) if ratio is not None else None,
        "ratio_met": ratio is not None and ratio >= TARGET_RATIO,
        "master_us_per_call": master,
        "master_met": master is not None and master <= TARGET_MASTER_US,
        "master_over_thread_server": round(share, 3) if share is not None else None,
        "master_share_met": share is not None and share <= TARGET_MASTER_SHARE,
        "open_loop_p99_ms": ol.get("p99_ms"),
        "p99_met": ol.get("p99_ms") is not None and ol["p99_ms"] <= TARGET_P99_MS,
        "errors": errors,
    }


def table(result: dict[str, Any]) -> str:
    """The readable report: one row per closed-loop phase, then the open-loop lines and targets."""
    cfg = result["config"]
    info = result["machine"]
    lines = [f"sbusr-bench {info['date']}  {info['nproc']} CPU {info['cpu_model']}  Python {info['python']}",
             f"mode={cfg['mode']} client={cfg['client']} duration={cfg['duration']}s "
             f"warmup={cfg['warmup']}s payload={cfg['payload_size']}B",
             "",
             f"{'mode':<8}{'phase':<9}{'conc':>5}{'procs':>6}{'calls/s':>10}{'p50 ms':>9}{'p95 ms':>9}"
             f"{'p99 ms':>9}{'errors':>8}{'srv RSS MB':>11}{'ratio':>7}"
             f"{'server':>8}{'workers':>8}{'bus':>6}{'load':>6}"]  # RSS: server + its worker processes
    for ph in result["phases"]:
        rss = (ph.get("server_rss_kb") or 0) + (ph.get("server_children_rss_kb") or 0)  # workers too
        cpu = ph.get("cpu_us_per_call") or {}
        lines.append(
            f"{ph.get('mode', cfg['mode']):<8}{ph['name']:<9}{ph['concurrency']:>5}{ph['load_processes']:>6}"
            f"{ph['calls_per_s']:>10.1f}"
            f"{_fmt(ph['p50_ms'], '.2f'):>9}{_fmt(ph['p95_ms'], '.2f'):>9}{_fmt(ph['p99_ms'], '.2f'):>9}"
            f"{ph['errors']:>8}{_fmt(rss / 1024 if rss else None, '.1f'):>11}"
            f"{_fmt(ph.get('ratio'), '.2f'):>7}"
            f"{_fmt(cpu.get('server'), '.0f'):>8}{_fmt(cpu.get('workers'), '.0f'):>8}"
            f"{_fmt(cpu.get('bus'), '.0f'):>6}{_fmt(cpu.get('load'), '.0f'):>6}")
    for ol in (result.get("open_loop_by_mode") or {}).values() or [result.get("open_loop")]:
        if ol:
            lines += ["", f"open loop, {ol.get('mode', cfg['mode'])} mode, at {ol['fraction']:.0%} of "
                          f"{ol['of_phase']} c={ol['of_concurrency']} ({ol['target_rate']:.0f} calls/s "
                          f"offered): {ol['calls_per_s']:.1f} calls/s answered, "
                          f"p50 {_fmt(ol['p50_ms'], '.2f')} ms, p95 {_fmt(ol['p95_ms'], '.2f')} ms, "
                          f"p99 {_fmt(ol['p99_ms'], '.2f')} ms, errors {ol['errors']}"
                          + (f" ({explain_errors(ol)})" if ol["errors"] else "")]
    lines += ["", "ratio = RPC calls/s / raw bus round trips/s at the same concurrency (raw rows: 1.00)",
              "server, workers, bus, load = CPU µs per call of each process (workers and load generators "
              "summed), read from /proc over the measured window; process mode: server = the master"]
    t = result.get("targets")
    if t:
        def mark(ok: bool) -> str:
            return "met" if ok else "NOT met"

        ratio, master, p99 = t["process_over_thread"], t["master_us_per_call"], t["open_loop_p99_ms"]
        lines += ["", f"targets at c={t['concurrency']}: process/thread calls/s {_fmt(ratio)} "
                      f"(>= {TARGET_RATIO}: {mark(t['ratio_met'])}); master CPU {_fmt(master)} µs per call "
                      f"(<= {TARGET_MASTER_US:g}: {mark(t['master_met'])}), "
                      f"{_fmt(t.get('master_over_thread_server'))} of thread mode's server CPU per call "
                      f"(<= {TARGET_MASTER_SHARE:g}: {mark(t.get('master_share_met', False))}); "
                      f"open-loop p99 {_fmt(p99)} ms "
                      f"(<= {TARGET_P99_MS:g}: {mark(t['p99_met'])}); errors {t['errors']}"]
    if result.get("cost"):
        lines += ["", cost.format_report(result["cost"])]
    return "\n".join(lines)
