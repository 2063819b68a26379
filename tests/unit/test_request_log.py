"""One structured line per sampled request, with what an operator needs to follow it."""

from __future__ import annotations

import json
import logging

import numpy as np

from serve_app.request.stages.scored import Scored
from serve_app.telemetry.request_log import RequestLog


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def logger() -> tuple[logging.Logger, Lines]:
    log = logging.getLogger("test.request_log")
    log.setLevel(logging.INFO)
    lines = Lines()
    log.handlers = [lines]
    log.propagate = False
    return log, lines


RESULT = Scored(
    np.array([5, 6, 7]),
    np.array([0.3, 0.2, 0.1], np.float32),
    "v1",
    filtered={"seen": 4},
    timings_ms={"retrieve": 1.23456, "rank": 2.5},
    degraded=True,
    reason="online store timed out",
)


def test_a_sampled_request_is_one_json_serialisable_record_with_its_id_outcome_and_timings() -> None:
    log, lines = logger()
    assert RequestLog(1.0, "graph", log).answered("req-1", 42, 2, RESULT, 9.87654)
    [record] = lines.records
    fields = json.loads(json.dumps(record.recsys))
    assert fields["request_id"] == "req-1" and fields["user_id"] == 42
    assert (fields["outcome"], fields["reason"]) == ("degraded", "user_features")
    assert fields["timings_ms"] == {"retrieve": 1.235, "rank": 2.5} and fields["total_ms"] == 9.877
    assert fields["bundle_version"] == "v1" and fields["items"] == 2 and fields["filtered"] == {"seen": 4}
    assert "req-1" in record.getMessage() and record.log_to_stderr is False


def test_sampling_rate_decides_how_many_lines() -> None:
    log, lines = logger()
    assert not any(RequestLog(0.0, "graph", log).answered("r", 1, 3, RESULT, 1.0) for _ in range(100))
    sampled = RequestLog(0.2, "graph", log, seed=3)
    n = sum(sampled.answered(f"r{i}", 1, 3, RESULT, 1.0) for i in range(2_000))
    assert 300 < n < 500 and len(lines.records) == n
    # By id: a stage serving the request in a coalesced call decides alike (serve_app/serve/coalesce.py).
    other = RequestLog(0.2, "graph", log, seed=99)
    assert all(other.sampled(f"r{i}") == sampled.sampled(f"r{i}") for i in range(2_000))


def test_refused_requests_are_logged_with_status_and_code() -> None:
    log, lines = logger()
    request_log = RequestLog(1.0, "colocated", log)
    assert request_log.refused("req-9", 503, "overloaded")
    assert request_log.refused(None, 422, "invalid_request")
    assert [(r.recsys["outcome"], r.recsys["reason"]) for r in lines.records] == [
        ("rejected", "overloaded"),
        ("invalid", "invalid_request"),
    ]
