"""Exposure and popularity bias of what is served, over a sliding window of answers.

The same three measures the offline evaluation reports (`offline/evaluation.exposure`), so the two can
be compared: catalogue coverage (share of items shown at least once), the Gini of exposure across the
whole catalogue (0: every item shown equally; 1: one item shown to everyone), and the share of shown
items that are among the top 1% most popular (offline: popular at each decision time; live: in the
served bundle's item snapshot). No ray import: the Serve metrics are set by `metrics.ExposureGauges`.
"""

from __future__ import annotations

import math
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
    """The item ids shown in the last `window` answers (each answer's top k).

    `add` only appends the answer's ids (a deque append, atomic under the GIL): the request path pays
    no lookup and no lock. `stats`, off the request path, maps the ids to catalogue rows and counts.
    """

    def __init__(self, item_ids: np.ndarray, top_mask: np.ndarray, window: int = 10_000) -> None:
        if len(top_mask) != len(item_ids):
            raise ValueError(f"top_mask has {len(top_mask)} rows, the catalogue {len(item_ids)}")
        self.item_ids, self.top_mask = np.asarray(item_ids, np.int64), top_mask  # ids sorted
        self.n_catalogue = len(item_ids)
        self.answers: deque[np.ndarray] = deque(maxlen=max(1, window))

    def add(self, item_ids: np.ndarray) -> None:
        self.answers.append(item_ids)

    def counts(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(rows shown, how often each, answers in the window); ids not in the catalogue are ignored."""
        answers = list(self.answers)  # a snapshot: requests go on appending meanwhile
        if not answers or not self.n_catalogue:
            return np.empty(0, np.int64), np.empty(0, np.int64), len(answers)
        ids = np.concatenate(answers).astype(np.int64)
        pos = np.searchsorted(self.item_ids, ids).clip(0, self.n_catalogue - 1)
        rows, counts = np.unique(pos[self.item_ids[pos] == ids], return_counts=True)
        return rows, counts, len(answers)

    def stats(self) -> ExposureStats:
        rows, counts, answers = self.counts()
        total = int(counts.sum())
        return ExposureStats(
            coverage=len(rows) / max(self.n_catalogue, 1),
            gini=gini_with_zeros(counts, self.n_catalogue),
            top1pct_share=float(counts[self.top_mask[rows]].sum() / total) if total else 0.0,
            answers=answers,
        )
