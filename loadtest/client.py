"""Load client: worker processes, each one asyncio loop over raw HTTP/1.1 keep-alive connections.

Why raw: an httpx AsyncClient tops out near 400 req/s at 100% CPU here (docs/decisions.md), below
what the single-process baseline serves; pre-encoded requests over asyncio streams cost a few µs.
Closed loop: C connections, each sends its next request as soon as the previous answer arrives.
Open loop: Poisson arrivals at a fixed rate; latency counts from the *scheduled* send time, so a slow
server cannot hide its queue by slowing the client down (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import multiprocessing as mp
import random
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from serve_app.control.haproxy_config import COARSE, DOOR_FALLBACKS

# The door's answer after a wait in its queue (the others came at once, the queue full, or no replica up)
DOOR_WAITED = COARSE["waited"][1].encode()

Payload = tuple[bytes, bool]  # (raw request, asks for debug timings)


@dataclass(frozen=True)
class Level:
    mode: str  # "closed" (value = concurrency) or "open" (value = arrivals per second)
    value: float
    duration_s: float
    port: int
    drain_s: float = 5.0  # how long in-flight requests may finish after the window closes
    timeout_s: float = 10.0  # per request; the Serve proxy's own request_timeout_s is 10 s
    timeline: bool = False  # keep every request's (send time, latency, status, degraded): loadtest.chaos
    # More ports of the same service (the ingress replicas' own, with direct ingress): closed-loop
    # connections and open-loop requests go round-robin over port + these, as a load balancer would.
    spread: tuple[int, ...] = ()

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port, *self.spread)


@dataclass
class Tally:
    """What one worker saw in one level; merged by the parent."""

    latencies_ms: list[float] = field(default_factory=list)  # 2xx answers only
    full_ms: list[float] = field(default_factory=list)  # ... of them not degraded: the whole answer
    door_ms: list[float] = field(default_factory=list)  # ... the front door's own, coarser answers
    door_waited: int = 0  # ... of them after waiting in its queue for queue_timeout_ms
    refused_ms: list[float] = field(default_factory=list)  # 503 and 429: how fast a refusal came
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0  # connection failures and malformed answers
    timeouts: int = 0  # no answer within timeout_s, or still unanswered after the drain
    degraded: int = 0
    fallback: dict[str, int] = field(default_factory=dict)  # reason -> count
    timings: list[dict[str, float]] = field(default_factory=list)  # sampled server timings_ms
    start: float = 0.0  # wall clock, for merging workers
    last: float = 0.0
    cpu_s: float = 0.0
    connections: int = 0
    # With Level.timeline: (scheduled send time, latency ms, status (0: no answer), degraded) per request
    events: list[tuple[float, float, int, bool]] | None = None

    def record(self, t0: float, t1: float, status: int, body: bytes, debug: bool) -> None:
        self.last = max(self.last, t1)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        degraded = b'"degraded":true' in body
        if self.events is not None:
            self.events.append((t0, (t1 - t0) * 1000, status, degraded))
        if status in (429, 503):
            self.refused_ms.append((t1 - t0) * 1000)
        if 200 <= status < 300:
            self.latencies_ms.append((t1 - t0) * 1000)
            # Byte searches instead of json.loads: parsing every answer would make the client the cost.
            self.degraded += degraded
            if not degraded:
                self.full_ms.append((t1 - t0) * 1000)
            if (i := body.find(b'"fallback":"')) >= 0:
                reason = body[i + 12 : body.find(b'"', i + 12)].decode()
                self.fallback[reason] = self.fallback.get(reason, 0) + 1
                if reason in DOOR_FALLBACKS:
                    self.door_ms.append((t1 - t0) * 1000)
                    self.door_waited += DOOR_WAITED in body
            if debug:
                timings = json.loads(body).get("timings_ms")
                if timings:
                    self.timings.append(timings)


class Conn:
    """One keep-alive connection; reopened lazily after any failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, payload: bytes) -> tuple[int, bytes]:
        if self.reader is not None and self.reader.at_eof():
            # The server closed it while it sat idle (HAProxy after its keep-alive timeout): open a new
            # one, as any HTTP client's pool does, instead of counting the server's housekeeping as a
            # failed request.
            self.close()
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(payload)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status, low = int(head[9:12]), head.lower()
        i = low.find(b"\r\ncontent-length:")
        if i >= 0:
            body = await self.reader.readexactly(int(low[i + 17 : low.index(b"\r\n", i + 17)]))
        elif b"\r\ntransfer-encoding: chunked" in low:
            body = await self._chunked()
        else:
            body = await self.reader.read()
            low += b"\r\nconnection: close"
        if b"\r\nconnection: close" in low:
            self.close()
        return status, body

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append((await self.reader.readexactly(size + 2))[:-2])
        await self.reader.readuntil(b"\r\n")
        return b"".join(parts)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _one(conn: Conn, payload: Payload, t0: float, level: Level, tally: Tally) -> bool:
    try:
        async with asyncio.timeout(level.timeout_s):
            status, body = await conn.request(payload[0])
    except TimeoutError:
        tally.timeouts += 1
        if tally.events is not None:
            tally.events.append((t0, (time.perf_counter() - t0) * 1000, 0, False))
        conn.close()
        return False
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        tally.errors += 1
        if tally.events is not None:
            tally.events.append((t0, (time.perf_counter() - t0) * 1000, 0, False))
        conn.close()
        await asyncio.sleep(0.01)  # a refused connection must not turn into a busy loop
        return False
    tally.record(t0, time.perf_counter(), status, body, payload[1])
    return True


async def _closed(level: Level, share: float, payloads: list[Payload], start_at: float, tally: Tally) -> None:
    ports = level.ports
    conns = [Conn(ports[i % len(ports)]) for i in range(int(share))]
    for c in conns:  # connect before the window so connection set-up is not counted as latency
        c.reader, c.writer = await asyncio.open_connection("127.0.0.1", c.port)
    tally.connections = len(conns)
    await asyncio.sleep(max(0.0, start_at - time.time()))
    start = time.perf_counter()
    end = start + level.duration_s
    tally.start, tally.last = start, start
    cycle = itertools.cycle(payloads)

    async def loop(conn: Conn) -> None:
        while (t0 := time.perf_counter()) < end:
            await _one(conn, next(cycle), t0, level, tally)

    tasks = [asyncio.create_task(loop(c)) for c in conns]
    _, pending = await asyncio.wait(tasks, timeout=level.duration_s + level.drain_s) if tasks else ((), ())
    await _cancel(pending, tally)
    for c in conns:
        c.close()


async def _cancel(pending: set[asyncio.Task], tally: Tally) -> None:
    """Requests still unanswered after the drain count as timeouts; reap them before the next level."""
    tally.timeouts += len(pending)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def _open(
    level: Level, rate: float, payloads: list[Payload], start_at: float, tally: Tally, seed: int
) -> None:
    # Per port, LIFO: reuse the warmest connection, open more only under real concurrency.
    idle: dict[int, list[Conn]] = {port: [] for port in level.ports}
    next_port = itertools.cycle(level.ports)
    cap = asyncio.Semaphore(512)
    rng = random.Random(seed)
    inflight: set[asyncio.Task] = set()

    opened: list[Conn] = []  # every connection, so those of cancelled requests get closed too

    async def one(t_sched: float, payload: Payload) -> None:
        async with cap:
            port = next(next_port)
            if idle[port]:
                conn = idle[port].pop()
            else:
                conn = Conn(port)
                opened.append(conn)
                tally.connections += 1
            if await _one(conn, payload, t_sched, level, tally):
                idle[conn.port].append(conn)

    await asyncio.sleep(max(0.0, start_at - time.time()))
    start = time.perf_counter()
    end, t, i = start + level.duration_s, start, 0
    tally.start, tally.last = start, start
    while rate > 0:
        t += rng.expovariate(rate)
        if t >= end:
            break
        if (delay := t - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(t, payloads[i % len(payloads)]))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
        i += 1
    if inflight:
        _, pending = await asyncio.wait(set(inflight), timeout=level.drain_s)
        await _cancel(pending, tally)
    for c in opened:
        c.close()


async def _run(level: Level, share: float, payloads: list[Payload], start_at: float, seed: int) -> Tally:
    tally = Tally(events=[] if level.timeline else None)
    cpu0 = time.process_time()
    if share > 0:
        if level.mode == "closed":
            await _closed(level, share, payloads, start_at, tally)
        else:
            await _open(level, share, payloads, start_at, tally, seed)
    tally.cpu_s = time.process_time() - cpu0
    if tally.start:  # perf_counter is per process: wall time lets the parent line workers up
        offset = time.time() - time.perf_counter()
        tally.start, tally.last = tally.start + offset, tally.last + offset
        if tally.events is not None:
            tally.events = [(t + offset, ms, status, d) for t, ms, status, d in tally.events]
    return tally


def _worker_main(pipe: Connection) -> None:
    # Ctrl-C is the parent's to handle: it stops the targets, then closes (or terminates) this pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # uvloop is optional: plain asyncio is ~2x slower but still far from the limit
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner, contextlib.suppress(EOFError, BrokenPipeError):
        while (msg := pipe.recv()) is not None:  # EOFError: the parent is gone, so are we
            pipe.send(runner.run(_run(*msg)))


class LoadClient:
    """A pool of worker processes kept across levels (spawning per level would cost ~0.5 s each)."""

    def __init__(self, processes: int = 2) -> None:
        ctx = mp.get_context("spawn")  # never fork a parent that may hold FAISS/OpenMP threads
        self.pipes: list[Connection] = []
        self.procs = []
        for _ in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child,), daemon=True, name="loadtest-client")
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def run(self, level: Level, payloads: list[Payload], seed: int = 0) -> list[Tally]:
        n = len(self.pipes)
        if level.mode == "closed":  # spread connections as evenly as possible over the workers
            shares = [float(int(level.value) // n + (i < int(level.value) % n)) for i in range(n)]
        else:
            shares = [level.value / n] * n
        start_at = time.time() + 0.3
        for i, pipe in enumerate(self.pipes):
            pipe.send((level, shares[i], payloads[i::n] or payloads, start_at, seed + i))
        limit = 0.3 + level.duration_s + level.drain_s + level.timeout_s + 30
        tallies = []
        for pipe in self.pipes:
            if not pipe.poll(limit):
                raise TimeoutError(f"a load client worker did not report within {limit:.0f} s")
            tallies.append(pipe.recv())
        return tallies

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):  # a worker that already died needs no goodbye
                pipe.send(None)
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()

    def __enter__(self) -> LoadClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
