"""A seeded synthetic interaction log with the structure real catalogues have.

Items belong to latent taste clusters, have power-law popularity and release dates spread over the
window, and lose appeal as they age; users mix a few clusters, their activity is log-normally skewed,
and ratings are higher inside a user's favourite cluster. So retrieval (tastes) and ranking (popularity,
freshness, rating) each have something real to learn. Output is MovieLens format, so one loader serves.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from serve_app.core.errors import DataError

DAY = 86_400
# Fixed epoch so the same seed always gives the same file, byte for byte.
WINDOW_END = 1_767_225_600  # 2026-01-01T00:00:00Z


@dataclass(frozen=True)
class SynthSpec:
    n_items: int = 5_000
    n_users: int = 2_000
    mean_interactions: float = 40.0
    n_clusters: int = 20
    weeks: int = 12
    seed: int = 0

    def validate(self) -> None:
        if not 100 <= self.n_items <= 5_000_000:
            raise DataError(f"--items must be between 100 and 5,000,000, got {self.n_items}")
        if not 10 <= self.n_users <= 2_000_000:
            raise DataError(f"--users must be between 10 and 2,000,000, got {self.n_users}")
        if not 2 <= self.n_clusters <= min(200, self.n_items // 5):
            raise DataError(f"--clusters must be between 2 and min(200, items/5), got {self.n_clusters}")
        if not 2 <= self.weeks <= 520:
            raise DataError(f"--weeks must be between 2 and 520, got {self.weeks}")
        if not 5 <= self.mean_interactions <= 1_000:
            raise DataError(f"--mean-interactions must be between 5 and 1000, got {self.mean_interactions}")


def _cluster_offset_cdf(weights: np.ndarray, cluster: np.ndarray, n_clusters: int) -> np.ndarray:
    """Per-cluster CDFs laid end to end, cluster c spanning (c, c+1], for one vectorised searchsorted."""
    out = np.empty(len(weights))
    for c in range(n_clusters):
        members = cluster == c
        w = weights[members]
        total = w.sum()
        cdf = np.cumsum(w) / total if total > 0 else np.linspace(0, 1, len(w) + 1)[1:]
        out[members] = c + cdf
    return out


def generate(spec: SynthSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (ratings, movies) frames in MovieLens column layout."""
    spec.validate()
    rng = np.random.default_rng(spec.seed)
    n_i, n_u, k = spec.n_items, spec.n_users, spec.n_clusters
    start = WINDOW_END - spec.weeks * 7 * DAY

    # Items sorted by cluster so each cluster's CDF is one contiguous run.
    item_cluster = np.sort(rng.integers(0, k, n_i))
    appeal = rng.pareto(1.2, n_i) + 1.0  # power-law popularity
    # Most of the catalogue exists before the window; the rest is released during it.
    release = np.where(
        rng.random(n_i) < 0.7,
        start - rng.integers(0, 52 * 7 * DAY, n_i),
        start + rng.integers(0, spec.weeks * 7 * DAY, n_i),
    )
    quality = rng.normal(0, 1, n_i)

    taste = rng.dirichlet(np.full(k, 0.15), n_u)
    activity = rng.lognormal(0, 1.0, n_u)
    counts = np.maximum(3, rng.poisson(activity / activity.mean() * spec.mean_interactions)).astype(np.int64)
    counts = np.minimum(counts, n_i // 2)
    user = np.repeat(np.arange(n_u), counts)
    ts = start + rng.integers(0, spec.weeks * 7 * DAY, len(user))

    u = rng.random(len(user))
    cluster = (np.cumsum(taste, axis=1)[user] < u[:, None]).sum(axis=1).clip(0, k - 1)

    item = np.empty(len(user), dtype=np.int64)
    week_of = (ts - start) // (7 * DAY)
    for week in range(spec.weeks):
        rows = np.flatnonzero(week_of == week)
        if len(rows) == 0:
            continue
        now = start + (week + 1) * 7 * DAY
        age_weeks = np.maximum(0, now - release) / (7 * DAY)
        weight = np.where(release < now, appeal * np.exp(-age_weeks / 26.0), 0.0)
        cdf = _cluster_offset_cdf(weight, item_cluster, k)
        pos = np.searchsorted(cdf, cluster[rows] + rng.random(len(rows)))
        item[rows] = np.minimum(pos, n_i - 1)

    affinity = taste[user, item_cluster[item]] * k
    rating = np.clip(
        np.round((2.5 + 0.6 * quality[item] + 0.5 * np.log1p(affinity) + rng.normal(0, 0.7, len(user))) * 2)
        / 2,
        0.5,
        5.0,
    )
    ratings = pd.DataFrame({"userId": user + 1, "movieId": item + 1, "rating": rating, "timestamp": ts})
    ratings = ratings.sort_values("timestamp", kind="stable").drop_duplicates(
        ["userId", "movieId"], keep="last"
    )
    movies = pd.DataFrame(
        {
            "movieId": np.arange(1, n_i + 1),
            "title": [f"Item {i}" for i in range(1, n_i + 1)],
            "genres": [f"Cluster{c:03d}" for c in item_cluster],
        }
    )
    return ratings.sort_values(["userId", "timestamp"]).reset_index(drop=True), movies


def write_movielens(ratings: pd.DataFrame, movies: pd.DataFrame, out: str | Path) -> Path:
    """Write both files atomically: a reader never sees one half-written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for frame, name in ((ratings, "ratings.csv"), (movies, "movies.csv")):
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        try:
            frame.to_csv(tmp, index=False)
            os.replace(tmp, out / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return out
