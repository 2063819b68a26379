"""Exposure and popularity bias of what is served, over a sliding window of answers.

The same three measures the offline evaluation reports (`offline/evaluation.exposure`), so the two can
be compared: catalogue coverage (share of items shown at least once), the Gini of exposure across the
whole catalogue (0: every item shown equally; 1: one item shown to everyone), and the share of shown
items that are among the top 1% most popular (offline: popular at each decision time; live: in the
served bundle's item snapshot). No ray import: the Serve metrics are set by `metrics.ExposureGauges`.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

TOP_SHARE = 0.01  # "the top 1% most popular items"


def gini(exposure: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0 when all are equal or there are none)."""
    x = np.sort(np.asarray(exposure, dtype=np.float64))
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return 0.0
    return float((2.0 * np.arange(1, n + 1) - n - 1).dot(x) / (n * total))


def gini_with_zeros(nonzero: np.ndarray, n_catalogue: int) -> float:
    """`gini` of a catalogue whose other n_catalogue - len(nonzero) items have count 0, sorting only
    the shown items (a window shows thousands of items; the catalogue may hold millions)."""
    x = np.sort(np.asarray(nonzero, dtype=np.float64))
    n, total = max(n_catalogue, len(x)), x.sum()
    if n == 0 or total == 0:
        return 0.0
    ranks = np.arange(n - len(x) + 1, n + 1)  # the zeros take the lowest ranks
    return float((2.0 * ranks - n - 1).dot(x) / (n * total))


def top_popular_mask(popularity: np.ndarray, share: float = TOP_SHARE) -> np.ndarray:
    """Rows among the `share` most popular (at least one), by a popularity column (NaN: never)."""
    pop = np.nan_to_num(np.asarray(popularity, dtype=np.float64), nan=-np.inf)
    n_top = max(1, math.ceil(share * len(pop)))
    mask = np.zeros(len(pop), bool)
    mask[np.argsort(-pop, kind="stable")[:n_top]] = True
    return mask


@dataclass(frozen=True)
class ExposureStats:
    coverage: float
    gini: float
    top1pct_share: float
    answers: int  # answers in the window the figures describe


class ExposureWindow:
    """Counts of every item row shown in the last `window` answers (each answer's top k).

    `add` is O(k) on the request path; `stats` (O(items shown), off the hot path) reads under a lock.
    """

    def __init__(self, n_catalogue: int, top_mask: np.ndarray, window: int = 10_000) -> None:
        if len(top_mask) != n_catalogue:
            raise ValueError(f"top_mask has {len(top_mask)} rows, the catalogue {n_catalogue}")
        self.n_catalogue, self.top_mask, self.window = n_catalogue, top_mask, max(1, window)
        self.counts = np.zeros(n_catalogue, np.int64)
        self.answers: deque[np.ndarray] = deque()
        self.lock = threading.Lock()

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        with self.lock:
            np.add.at(self.counts, rows, 1)
            self.answers.append(rows)
            while len(self.answers) > self.window:
                np.subtract.at(self.counts, self.answers.popleft(), 1)

    def stats(self) -> ExposureStats:
        with self.lock:
            shown = np.flatnonzero(self.counts)
            counts = self.counts[shown]
            answers = len(self.answers)
        total = int(counts.sum())
        return ExposureStats(
            coverage=len(shown) / max(self.n_catalogue, 1),
            gini=gini_with_zeros(counts, self.n_catalogue),
            top1pct_share=float(counts[self.top_mask[shown]].sum() / total) if total else 0.0,
            answers=answers,
        )
