"""Online ANN recall: how much of the exact top-N the served index returns, on sampled live queries.

Build-time recall (the manifest's `index.recall_at_*`) is measured on the build's users once; the
queries served later (folded-in vectors, a drifted population, an index rebuilt with other parameters)
may fare worse. On a sampled share of live retrieval queries the monitor runs, on its own thread and
off the request path, the same ANN search and an exact one (`ItemIndex.exact_search`, over the vectors
the index holds) and publishes recall@N averaged over the last `window` samples. When its thread is
busy a sample is dropped, never queued behind: the monitor must not become the service's backlog.
No ray import; the Serve gauge is `metrics.RecallGauge`.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from serve_app.core.artifacts import ItemIndex

log = logging.getLogger(__name__)
T = TypeVar("T")
Publish = Callable[[float, int], None]  # (mean recall over the window, samples in it)


def recall_at(index: ItemIndex, queries: np.ndarray, n: int) -> np.ndarray:
    """Per query: the share of its exact top-n rows that the index's top-n search returns."""
    n = max(1, min(n, index.ntotal))
    _, got = index.search(queries, n)
    truth = index.exact_search(queries, n)
    return np.array(
        [len(np.intersect1d(t, g[g >= 0])) / n for t, g in zip(truth, got, strict=True)], np.float64
    )


class RecallMonitor:
    def __init__(
        self, publish: Publish, sample_rate: float, depth: int, window: int = 50, seed: int | None = None
    ) -> None:
        self.publish, self.window = publish, window
        self.configure(sample_rate, depth)
        self.recent: deque[float] = deque(maxlen=window)
        self.rng = random.Random(seed)
        self.todo: queue.Queue[tuple[str, ItemIndex, np.ndarray, int]] = queue.Queue(maxsize=4)
        self.version: str | None = None
        self.dropped = 0
        threading.Thread(target=self._work, name="recall-monitor", daemon=True).start()

    def configure(self, sample_rate: float, depth: int) -> None:
        self.sample_rate, self.depth = sample_rate, depth

    def offer(
        self,
        version: str,
        index: ItemIndex,
        requests: Sequence[T],
        vector_of: Callable[[T], np.ndarray | None],
    ) -> int:
        """Sample some of a batch's requests (none if sampling is off) and queue their query vectors
        (`vector_of`, None: the request has none) for measuring; returns how many were queued."""
        if self.sample_rate <= 0 or not requests:
            return 0
        chosen = [r for r in requests if self.rng.random() < self.sample_rate]
        vectors = [v for v in map(vector_of, chosen) if v is not None]
        if not vectors:
            return 0
        try:
            self.todo.put_nowait((version, index, np.stack(vectors).astype(np.float32), self.depth))
        except queue.Full:
            self.dropped += len(vectors)
            return 0
        return len(vectors)

    def _work(self) -> None:
        while True:
            version, index, queries, depth = self.todo.get()
            try:
                recalls = recall_at(index, queries, depth)
                if version != self.version:  # a new bundle: its recall starts afresh
                    self.recent.clear()
                    self.version = version
                self.recent.extend(recalls.tolist())
                self.publish(float(np.mean(self.recent)), len(self.recent))
            except Exception:  # a monitor must never take the replica down
                log.exception("online recall sample failed")
            finally:
                self.todo.task_done()

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """For tests: True once every offered sample has been measured and published."""
        deadline = time.monotonic() + timeout_s
        while self.todo.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.todo.unfinished_tasks
