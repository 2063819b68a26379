"""The adaptive in-flight limit: it grows while latency holds, and settles near what the service can
take when latency rises with load (a simulated service whose latency grows past N requests in flight)."""

from __future__ import annotations

import itertools

import pytest

from serve_app.admission import AdaptiveLimit, LimitSettings
from serve_app.errors import Overloaded

BASE_S = 0.005


def serve_rounds(limit: AdaptiveLimit, demand: int, parallel: int, rounds: int) -> list[int]:
    """Each round `demand` requests arrive at once; those admitted take BASE_S while at most
    `parallel` are in flight, proportionally longer beyond (a saturated CPU shares itself)."""
    admitted_per_round = []
    for _ in range(rounds):
        admitted = sum(limit.try_acquire() for _ in range(demand))
        latency = BASE_S * max(1.0, admitted / parallel)
        for _ in range(admitted):
            limit.release(latency)
        admitted_per_round.append(admitted)
    return admitted_per_round


def test_the_limit_settles_near_what_the_service_can_take_under_overload() -> None:
    limit = AdaptiveLimit(LimitSettings(initial=4, window=20))
    admitted = serve_rounds(limit, demand=500, parallel=8, rounds=400)
    settled = admitted[-100:]
    # tolerance 2: latency may double before the limit shrinks; sqrt headroom keeps probing above
    assert min(settled) >= 8 and max(settled) <= 8 * 2 + 8, settled[-10:]
    assert limit.rejected > 0


def test_the_limit_grows_while_latency_holds() -> None:
    limit = AdaptiveLimit(LimitSettings(initial=4, window=20, maximum=64))
    serve_rounds(limit, demand=100, parallel=1_000, rounds=300)
    assert limit.limit == 64


def test_admit_refuses_at_once_with_overloaded() -> None:
    limit = AdaptiveLimit(LimitSettings(initial=2, minimum=1, window=100))
    clock = itertools.count().__next__  # one "second" per call
    with (
        limit.admit(clock),
        limit.admit(clock),
        pytest.raises(Overloaded, match="2 requests in flight, the limit is 2"),
        limit.admit(clock),
    ):
        pass  # pragma: no cover
    assert limit.in_flight == 0 and limit.rejected == 1


def test_a_window_of_failed_requests_halves_the_limit() -> None:
    limit = AdaptiveLimit(LimitSettings(initial=8, minimum=1, window=4))
    for _ in range(4):
        with pytest.raises(RuntimeError), limit.admit(itertools.count().__next__):
            raise RuntimeError("the stage failed")
    assert limit.limit == 4 and limit.in_flight == 0


def test_degraded_answers_that_waited_out_a_dead_replica_do_not_shrink_the_limit() -> None:
    limit = AdaptiveLimit(LimitSettings(initial=8, window=4))
    serve_rounds(limit, demand=4, parallel=8, rounds=5)  # learn the unloaded latency
    before = limit.limit
    for _ in range(40):  # every answer took the whole deadline, degraded
        with limit.admit(iter([0.0, 1.0] * 1).__next__) as ticket:
            ticket.sample = False
    assert limit.limit == before and limit.in_flight == 0


def test_the_setting_picks_the_limit_and_survives_yaml() -> None:
    import yaml

    from serve_app.admission import NoLimit, admission_for
    from serve_app.config import ServingSettings

    for text, kind in (("admission: adaptive", AdaptiveLimit), ("admission: unlimited", NoLimit)):
        settings = ServingSettings.model_validate(yaml.safe_load(text))
        limit = admission_for(settings)
        assert type(limit) is kind
    unlimited = admission_for(ServingSettings(admission="unlimited"))
    assert all(unlimited.try_acquire() for _ in range(10_000))
