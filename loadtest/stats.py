"""Numbers for the report: latency percentiles, merged client tallies, process CPU/RSS, the machine."""

from __future__ import annotations

import contextlib
import platform
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from loadtest.client import Tally

PERCENTILES = {"p50": 50, "p95": 95, "p99": 99, "p99_9": 99.9}


def latency_summary(latencies_ms: Sequence[float] | np.ndarray) -> dict[str, float | None]:
    a = np.asarray(latencies_ms, dtype=np.float64)
    if not len(a):
        return {**dict.fromkeys(PERCENTILES), "mean": None, "max": None}
    out = {k: round(float(np.percentile(a, q)), 3) for k, q in PERCENTILES.items()}
    return {**out, "mean": round(float(a.mean()), 3), "max": round(float(a.max()), 3)}


def stage_summary(timings: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Server-reported per-stage timings (timings_ms of the debug-sampled answers), per stage."""
    by_stage: dict[str, list[float]] = {}
    for t in timings:
        for stage, ms in t.items():
            by_stage.setdefault(stage, []).append(float(ms))
    return {
        stage: {
            "n": len(v),
            "mean": round(float(np.mean(v)), 3),
            "p50": round(float(np.percentile(v, 50)), 3),
            "p99": round(float(np.percentile(v, 99)), 3),
        }
        for stage, v in sorted(by_stage.items())
    }


def merge(tallies: Sequence[Tally], duration_s: float) -> dict[str, Any]:
    """One level's figures from all client workers; throughput counts 2xx answers only."""
    active = [t for t in tallies if t.start]
    lat = [x for t in active for x in t.latencies_ms]
    statuses: dict[int, int] = {}
    for t in active:
        for code, n in t.statuses.items():
            statuses[code] = statuses.get(code, 0) + n
    start = min((t.start for t in active), default=0.0)
    elapsed = max([duration_s, *(t.last - start for t in active)])
    ok = sum(n for code, n in statuses.items() if 200 <= code < 300)
    fallback: dict[str, int] = {}  # why the normal path was not used (unknown_user is the 5% mix)
    for t in active:
        for reason, n in t.fallback.items():
            fallback[reason] = fallback.get(reason, 0) + n
    errors = sum(t.errors + t.timeouts for t in active) + sum(n for c, n in statuses.items() if c >= 300)
    return {
        "requests": ok + errors,
        "ok": ok,
        "throughput_rps": round(ok / elapsed, 2) if elapsed else 0.0,
        # what a user still waited for: answers within the app's 1 s request deadline
        "within_1s_rps": round(sum(1 for x in lat if x <= 1_000) / elapsed, 2) if elapsed else 0.0,
        "elapsed_s": round(elapsed, 3),
        "latency_ms": latency_summary(lat),
        # the whole answer (not degraded), and the front door's coarser one past capacity
        "full_rps": round(sum(len(t.full_ms) for t in active) / elapsed, 2) if elapsed else 0.0,
        "full_latency_ms": latency_summary([x for t in active for x in t.full_ms]),
        "door": sum(len(t.door_ms) for t in active),
        "door_latency_ms": latency_summary([x for t in active for x in t.door_ms]),
        "door_waited": sum(t.door_waited for t in active),
        "refused_latency_ms": latency_summary([x for t in active for x in t.refused_ms]),
        "errors": errors,
        "error_rate": round(errors / max(1, ok + errors), 5),
        "status": {str(k): v for k, v in sorted(statuses.items())},
        "n_429": statuses.get(429, 0),
        "n_503": statuses.get(503, 0),
        "timeouts": sum(t.timeouts for t in active),
        "connection_errors": sum(t.errors for t in active),
        "degraded": sum(t.degraded for t in active),
        "fallback": fallback,
        "stage_timings_ms": stage_summary([x for t in active for x in t.timings]),
        "client": {
            "processes": len(tallies),
            "connections": sum(t.connections for t in active),
            # 100 = one core busy; compare with cores x 100 to see whether the client was the limit
            "cpu_pct": round(100 * sum(t.cpu_s for t in tallies) / elapsed, 1) if elapsed else 0.0,
        },
    }


def _name(p: psutil.Process) -> str:
    """Ray titles its workers "ray::ServeReplica:app:Ingress", "ray::ProxyActor", ...; group by that."""
    try:
        cmd = p.cmdline()
        head = cmd[0] if cmd else p.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    if head.startswith("ray::"):  # the title carries the running method too: "Retriever.retrieve"
        title = head.split()[0].split(".")[0]
        return title.rsplit(":", 1)[-1] if "ServeReplica" in title else title[5:]
    if p.name().startswith("python") and len(cmd) > 1:  # Ray's agents and dashboard are scripts
        script = next((a for a in cmd[1:] if a.endswith(".py")), None)
        return Path(script).name if script else p.name()
    return p.name()


class ProcMonitor:
    """CPU and RSS of a set of processes (re-discovered while running: Serve may add replicas)."""

    def __init__(self, procs: Callable[[], list[psutil.Process]], interval_s: float = 0.5) -> None:
        self.procs, self.interval_s = procs, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cpu: dict[int, float] = {}  # pid -> cpu seconds at start (0 for processes born later)
        self._last: dict[int, float] = {}
        self._rss_peak = 0.0
        self._rss: dict[int, float] = {}
        self._names: dict[int, str] = {}
        self._pss: dict[int, float] = {}

    def _sample(self) -> float:
        rss: dict[int, float] = {}
        for p in self.procs():
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    self._last[p.pid] = t.user + t.system
                    rss[p.pid] = p.memory_info().rss
                self._names.setdefault(p.pid, _name(p))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        self._rss = rss
        self._rss_peak = max(self._rss_peak, sum(rss.values()))
        return sum(rss.values())

    def __enter__(self) -> ProcMonitor:
        self._sample()
        self._cpu = dict(self._last)
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.rss_end = self._sample()
        self.elapsed = time.perf_counter() - self._t0
        self._pss = _pss(self.procs())

    def result(self) -> dict[str, Any]:
        cpu_by_pid = {pid: v - self._cpu.get(pid, 0.0) for pid, v in self._last.items()}
        cpu = sum(cpu_by_pid.values())
        groups: dict[str, dict[str, float]] = {}
        for pid in self._last:  # per role: which Ray process the CPU and memory go to
            g = groups.setdefault(
                self._names.get(pid, "?"), {"n": 0, "rss_mib": 0.0, "pss_mib": 0.0, "cpu_pct": 0.0}
            )
            g["n"] += pid in self._rss  # live at the end
            g["rss_mib"] = round(g["rss_mib"] + self._rss.get(pid, 0) / 2**20, 1)
            g["pss_mib"] = round(g["pss_mib"] + self._pss.get(pid, 0) / 2**20, 1)
            g["cpu_pct"] = round(g["cpu_pct"] + 100 * cpu_by_pid[pid] / self.elapsed, 1)
        return {
            # RSS sums double-count shared pages (Ray's object store, shared libraries): an upper bound.
            "cpu_pct": round(100 * cpu / self.elapsed, 1),
            "rss_mib": round(self.rss_end / 2**20, 1),
            "rss_peak_mib": round(self._rss_peak / 2**20, 1),
            # PSS shares each page among the processes that map it: what the set really occupies.
            "pss_mib": round(sum(self._pss.values()) / 2**20, 1),
            "processes": len(self._rss),
            "process_groups": dict(sorted(groups.items())),
        }


def _pss(procs: list[psutil.Process]) -> dict[int, float]:
    """Proportional set size per pid (reads /proc/<pid>/smaps_rollup: once per window, not per sample)."""
    out: dict[int, float] = {}
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, AttributeError):
            out[p.pid] = p.memory_full_info().pss
    return out


def tree(pid: int) -> Callable[[], list[psutil.Process]]:
    """The process and all its descendants, looked up afresh on every call."""

    def procs() -> list[psutil.Process]:
        try:
            root = psutil.Process(pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    return procs


def machine() -> dict[str, Any]:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cores_logical": psutil.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg_at_start": [round(x, 2) for x in psutil.getloadavg()],
    }
