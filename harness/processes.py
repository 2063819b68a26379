"""The processes of a local cluster: found by what started them or by the mark they carry, and
stopped roots first.

Every process the harness starts for a cluster carries `RECSYS_CLUSTER=<its state file>` in its
environment (`MARK`), and so does everything those start (Ray's GCS, raylet, agents and replicas
inherit it). `stop` finds a cluster's processes by what its state file records (a process tree, a
process group) and by that mark, so a process whose start was interrupted before it was recorded (a
`make stop` during a `make run`) is stopped too. The mark is the state file's absolute path: the
clusters of another checkout, or of another test, are never touched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import psutil

MARK = "RECSYS_CLUSTER"


def mark(state_file: Path) -> dict[str, str]:
    """The environment entry that marks a process as one of this cluster's."""
    return {MARK: str(state_file.resolve())}


def marked(state_file: Path) -> list[psutil.Process]:
    """Every process carrying this cluster's mark, but this one and its ancestors (a `make run` that
    stops what it started must not stop itself)."""
    value = str(state_file.resolve())
    me = psutil.Process()
    spared = {me.pid, *(p.pid for p in me.parents())}
    found = []
    for p in psutil.process_iter():
        if p.pid in spared:
            continue
        with contextlib.suppress(psutil.Error):
            if p.environ().get(MARK) == value:
                found.append(p)
    return found


def tree(pid: int | None) -> list[psutil.Process]:
    """The process `pid` and all its descendants; [] when it is gone."""
    if not pid:
        return []
    try:
        root = psutil.Process(pid)
        return [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return []


def process_group(pgid: int | None) -> list[psutil.Process]:
    """Every process of the process group `pgid` (one we started with start_new_session) and what those
    started, even in groups of their own (Ray puts each worker process in one); [] for None."""
    if not pgid:
        return []
    group = []
    for p in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if os.getpgid(p.pid) == pgid:
                group.append(p)
    found = {p.pid: p for p in group}
    for p in group:
        with contextlib.suppress(psutil.Error):
            found.update((c.pid, c) for c in p.children(recursive=True))
    return list(found.values())


# Ray's own processes that serve no request: its dashboard and the dashboard's modules, the agents, the
# monitors, the Ray Client server and the `ray start` that watches them. The GCS, the raylet and the
# workers (replicas, Serve's controller and proxy) are not among them.
_DAEMONS = (
    "ray/dashboard/",
    "ray.dashboard",
    "ray-dashboard-",
    "ray::DashboardAgent",
    "ray::RuntimeEnvAgent",
    "runtime_env/agent/main.py",  # the runtime env agent before it sets its title
    "log_monitor.py",
    "autoscaler/_private/monitor.py",
    "ray.util.client.server",
    "/bin/ray start",
)


# Named by the executable, never by the command line: the raylet's names the dashboard agent's script
# among its arguments. Its niceness is the replicas' (raylets() below), not the daemons'.
_SERVING = ("raylet", "gcs_server")


def daemons(pid: int | None) -> list[psutil.Process]:
    """Ray's background processes in the tree of `pid` (a `ray start --block`)."""
    found = []
    for p in tree(pid):
        with contextlib.suppress(psutil.Error):
            if p.name() in _SERVING:
                continue
            command = " ".join(p.cmdline()) or p.name()
            if any(mark in command for mark in _DAEMONS):
                found.append(p)
    return found


# The agents every raylet starts, by the titles they give themselves once running.
AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def agents_titled(pid: int | None) -> bool:
    """Whether both agents in the tree of `pid` carry their titles: before, one may still show the
    raylet's name (forked, not yet exec'd) or a bare python, and no daemon mark matches it."""
    return set(AGENTS) <= {_name(p) for p in tree(pid)}


def raylets(pid: int | None) -> list[psutil.Process]:
    """The raylet in the tree of `pid`: every worker it starts (a replica) inherits its niceness, and
    Ray adds RAY_worker_niceness to it."""
    return [p for p in tree(pid) if _name(p) == "raylet"]


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:  # gone since the tree was read
        return ""


def renice(procs: list[psutil.Process], niceness: int) -> None:
    """Set the processes' niceness (higher: they get the CPU after everything else)."""
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.nice(niceness)


def renice_node(pid: int, replica_niceness: int, daemon_niceness: int, wait_s: float = 20) -> None:
    """Renice the raylet in the tree of `pid`, then the daemons, again until both agents carry titles.

    The raylet first: a process it starts from then on inherits its niceness. One it forked before
    may not be recognisable yet (a raylet not yet exec'd, an untitled python), so the daemons are read
    again until the agents are named; past `wait_s` the node serves as it is.
    """
    deadline = time.monotonic() + wait_s
    while True:
        renice(raylets(pid), replica_niceness)
        renice(daemons(pid), daemon_niceness)
        if agents_titled(pid) or time.monotonic() > deadline:
            return
        time.sleep(0.25)


def alive(pid: int | None) -> bool:
    """Running, and not a zombie waiting for its parent to reap it."""
    try:
        return bool(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pid: int | None, timeout_s: float) -> bool:
    """Until the process has exited (a zombie counts: only its parent can reap it); True if it has."""
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(pid)


def stop_all(procs: list[psutil.Process], grace_s: float = 1) -> None:
    """Stop `procs`, roots first, and return once they have exited.

    The roots first: `ray start --block` shuts its GCS, raylet and agents down in order; sent to all
    at once, those wait on each other and need the SIGKILL. Then whatever is left (an orphan whose
    parent died, a process that ignored it) gets SIGTERM, then SIGKILL. A stopped process (a paused
    redis-server in a test) gets SIGCONT with its SIGTERM, or it could not act on it.

    The graces are short: an idle head's orderly shutdown takes ~4 s, but one serving the graph spent
    10 s before its replicas even began theirs, 16.6 s in all under 10 s + 5 s graces, and still needed
    the SIGKILL; under 1 s + 1 s, 3.3 s (measured 2026-12-07). Nothing is lost by cutting it short: an
    event is acknowledged only once written to the online store, so a replica killed mid-write has
    acknowledged nothing, and Prometheus and redis-server keep their write-ahead logs.
    """
    unique = list({p.pid: p for p in procs}.values())
    pids = {p.pid for p in unique}
    roots = [p for p in unique if _parent_pid(p) not in pids]
    left = unique
    for victims, signums, wait_s in (
        (roots, (signal.SIGTERM, signal.SIGCONT), grace_s),
        (unique, (signal.SIGTERM, signal.SIGCONT), grace_s),
        (unique, (signal.SIGKILL,), 10),
    ):
        for p in victims:
            if p in left:
                for signum in signums:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        p.send_signal(signum)
        # SIGKILL too is delivered asynchronously: return only once the processes are gone, so a caller
        # that starts a new cluster or checks for leftovers right after does not race their exit.
        _, left = psutil.wait_procs(left, timeout=wait_s)
        if not left:
            return


def _parent_pid(p: psutil.Process) -> int | None:
    try:
        return p.ppid()
    except psutil.Error:
        return None
