"""Online ANN recall: exact search from the index's own vectors, and a monitor that sees a bad index."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from serve_app.offline.config import IndexConfig
from serve_app.offline.index import build_index, exact_top
from serve_app.telemetry.recall_monitor import RecallMonitor, recall_at

ROOT = Path(__file__).resolve().parents[2]


def alert_threshold() -> float:
    """The recall under which cluster/prometheus/alerts.yml's RecsysAnnRecallLow fires."""
    rules = yaml.safe_load((ROOT / "cluster" / "prometheus" / "alerts.yml").read_text())
    [rule] = [r for g in rules["groups"] for r in g["rules"] if r["alert"] == "RecsysAnnRecallLow"]
    return float(re.search(r"ray_recsys_ann_recall\)\s*<\s*([0-9.]+)", rule["expr"]).group(1))


ALERT_THRESHOLD = alert_threshold()


def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Items in tight clusters: IVF lists follow them, and one probe misses every other cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    return (centres[rng.integers(clusters, size=n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    items = clustered(4_000, 16, 40, seed=0)
    queries = np.random.default_rng(1).normal(size=(64, 16)).astype(np.float32)
    return items, queries


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_exact_search_is_brute_force_for_every_index_kind(kind, data) -> None:
    items, queries = data
    index, _ = build_index(items, IndexConfig(kind=kind, ivf_nprobe=1, hnsw_ef_search=8))
    got = index.exact_search(queries, 50)
    truth = exact_top(items, queries, 50)
    assert np.mean([len(np.intersect1d(g, t)) / 50 for g, t in zip(got, truth, strict=True)]) > 0.999


def test_a_bad_index_reads_below_the_alert_threshold_and_a_good_one_near_one(data) -> None:
    items, queries = data
    bad, _ = build_index(items, IndexConfig(kind="ivf", ivf_nlist=64, ivf_nprobe=1))
    good, _ = build_index(items, IndexConfig(kind="ivf", ivf_nlist=64, ivf_nprobe=64))
    assert recall_at(bad, queries, 100).mean() < ALERT_THRESHOLD
    assert recall_at(good, queries, 100).mean() > 0.99


def test_the_monitor_samples_off_the_request_path_and_publishes_a_windowed_mean(data) -> None:
    items, queries = data
    bad, _ = build_index(items, IndexConfig(kind="ivf", ivf_nlist=64, ivf_nprobe=1))
    published: list[tuple[float, int]] = []
    monitor = RecallMonitor(lambda r, n: published.append((r, n)), sample_rate=1.0, depth=100, window=32)
    for batch in np.split(queries, 8):
        assert monitor.offer("v1", bad, list(batch), lambda q: q) == 8
        assert monitor.wait_idle()
    assert len(published) == 8 and published[-1][1] == 32  # the window holds the latest 32 queries
    assert published[-1][0] == pytest.approx(recall_at(bad, queries[-32:], 100).mean())
    assert published[-1][0] < ALERT_THRESHOLD


def test_sampling_off_or_without_vectors_costs_nothing_and_a_new_bundle_starts_afresh(data) -> None:
    items, queries = data
    flat, _ = build_index(items, IndexConfig(kind="flat"))
    published: list[tuple[float, int]] = []
    monitor = RecallMonitor(lambda r, n: published.append((r, n)), sample_rate=0.0, depth=50)
    assert monitor.offer("v1", flat, list(queries), lambda q: q) == 0
    monitor.configure(sample_rate=1.0, depth=50)
    assert monitor.offer("v1", flat, list(queries[:4]), lambda q: None) == 0  # users with no vector
    assert monitor.offer("v1", flat, list(queries[:4]), lambda q: q) == 4
    assert monitor.wait_idle()
    assert monitor.offer("v2", flat, list(queries[:2]), lambda q: q) == 2
    assert monitor.wait_idle()
    assert published == [(1.0, 4), (1.0, 2)]
