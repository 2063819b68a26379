"""The hop-cost probe (loadtest/hop_cost.py) measures what docs/architecture.md's topology figures
quote: calls made one after another between two replicas on a head of its own, over each transport, and
leaves no cluster behind."""

from __future__ import annotations

import pytest

from loadtest import hop_cost
from tests.conftest import local_serve, running

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_every_variant_is_timed_and_two_hops_in_a_row_cost_more_than_one() -> None:
    # As in a test session: this process has driven a cluster of its own with another token before.
    with local_serve("before-hop-cost"):
        pass
    report = hop_cost.run(calls=40, warmup=10)

    assert [v["name"] for v in report["variants"]] == [v[0] for v in hop_cost.VARIANTS]
    for v in report["variants"]:
        assert 0 < v["p50_ms"] <= v["p90_ms"] <= v["p99_ms"] < 1000, v
    one, two = report["variants"][3], report["variants"][4]
    assert (one["hops"], two["hops"]) == (1, 2)
    assert two["p50_ms"] > one["p50_ms"], report  # the calls of a round are awaited one after the other
    assert "| two hops in a row" in hop_cost.markdown(report)
    assert not running(report["head_pid"])  # stopped
    # And the process drives its own clusters again after, with the session's token.
    with local_serve("after-hop-cost"):
        pass
