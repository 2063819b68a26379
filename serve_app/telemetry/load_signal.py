"""What a replica tells Serve's autoscaler besides its own in-flight calls (serve/autoscaling.py).

Serve counts the calls a replica holds. Two things it cannot see: the requests waiting at the front
door (HAProxy holds them until a replica has a free slot, and stamps the queue's length on each request
it forwards: `X-Recsys-Door-Queue`), and the requests inside one coalesced stage call (a graph stage
gets a batch of up to `ingress_batch_size` requests as one call). `DoorQueue` keeps the door's reports,
`RowsInFlight` the stage's requests; each is read, and reset, once per Serve metrics sample.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

DOOR_QUEUE_HEADER = "x-recsys-door-queue"
MAX_DOOR_QUEUE = 100_000  # the door's max_queue is at most this; a larger figure is not the door's


def door_queue_of(header: str | None) -> int | None:
    """The door's queue length from its header, or None when absent or not a figure the door sends."""
    if header is None or not header.isdigit() or len(header) > 6:
        return None
    value = int(header)
    return value if value <= MAX_DOOR_QUEUE else None


class DoorQueue:
    """The mean of the queue lengths the door reported on the requests since the last read (0 when none
    came: nothing waits at a door that forwards nothing)."""

    def __init__(self) -> None:
        self._sum = 0
        self._count = 0

    def seen(self, length: int) -> None:
        self._sum += length
        self._count += 1

    def heard(self, header: str | None) -> None:
        """A request's `X-Recsys-Door-Queue`; one that came another way carries none."""
        length = door_queue_of(header)
        if length is not None:
            self.seen(length)

    def read(self) -> float:
        mean = self._sum / self._count if self._count else 0.0
        self._sum = self._count = 0
        return mean


class RowsInFlight:
    """The time-averaged number of requests a stage replica holds, however they are batched into calls
    (Little's law: the mean of what is in flight, not a peak). Thread-safe: sync stage methods run in
    Serve's thread pool."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._n = 0
        self._area = 0.0
        self._since = self._at = clock()

    def _advance(self, now: float) -> None:
        self._area += self._n * (now - self._at)
        self._at = now

    def add(self, n: int) -> None:
        """`n` requests arrive (or, negative, leave)."""
        with self._lock:
            self._advance(self._clock())
            self._n += n

    def read(self) -> float:
        with self._lock:
            now = self._clock()
            self._advance(now)
            elapsed = now - self._since
            mean = self._area / elapsed if elapsed > 0 else float(self._n)
            self._area, self._since = 0.0, now
            return mean

    def holding(self, n: int) -> _Holding:
        """`with rows.holding(len(batch)):` counts the batch while it is being answered."""
        return _Holding(self, n)


class _Holding:
    def __init__(self, rows: RowsInFlight, n: int) -> None:
        self.rows, self.n = rows, n

    def __enter__(self) -> None:
        self.rows.add(self.n)

    def __exit__(self, *_: object) -> None:
        self.rows.add(-self.n)


def desired_replicas(in_flight: float, waiting: float, target_per_replica: float) -> float:
    """Serve's queue-length rule over every request the deployment is responsible for: those its
    replicas hold and those waiting for them. Serve's wrapper applies the bounds, the scaling factors
    and the up/down delays to what this returns."""
    if target_per_replica <= 0:
        raise ValueError("target_per_replica must be positive")
    return (in_flight + max(0.0, waiting)) / target_per_replica
