"""The soak report's drift arithmetic (no Ray, no load)."""

from __future__ import annotations

import pytest

from loadtest.soak import markdown, slope


def _window(minute: int, rss: float, p99: float) -> dict:
    return {
        "minute": minute,
        "throughput_rps": 40.0,
        "requests": 2400,
        "failed": 0,
        "degraded": 1,
        "p50_ms": 20.0,
        "p99_ms": p99,
        "rss_mib": {"Ingress": rss / 2, "Retriever": rss / 2, "total": rss},
    }


def test_slope_is_the_least_squares_change_per_window():
    assert slope([100.0, 102.0, 104.0, 106.0]) == pytest.approx(2.0)
    assert slope([5.0, 4.0, 6.0, 5.0]) == pytest.approx(0.2)
    assert slope([1.0]) is None


def test_the_markdown_reports_every_window_and_the_drift():
    report = {
        "config": "cluster/serve_config.yaml",
        "rate_rps": 40.0,
        "capacity_rps": 80.0,
        "windows": [_window(m, 1000 + 3 * m, 50.0) for m in range(1, 5)],
        "drift_per_minute": {"rss_total_mib": 3.0, "p99_ms": 0.0},
        "rss_drift_by_kind_mib_per_minute": {"Ingress": 1.5, "Retriever": 1.5},
    }
    text = markdown(report)
    assert text.count("\n| ") == 5  # header row and four windows
    assert "RSS +3.00 MiB/min (1003 -> 1012 MiB)" in text and "Ingress +1.50" in text
