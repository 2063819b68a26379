"""Structured request logs: one line per sampled request, to follow a request across replicas.

The line goes to Serve's logger (`ray.serve`), so it lands in the ingress replica's log file next to
Serve's own lines, carrying Serve's `request_id`, `deployment` and `replica` fields; with
`logging_config: {encoding: JSON}` (cluster/serve_config*.yaml) every line is one JSON object and our
fields sit under the `recsys` key. The request id is the one the client sent as X-Request-ID (or the
one the proxy made), which Serve also stamps on the stage replicas' lines of the same request, so
`grep <id>` over the session's `logs/serve/` follows it through every hop. Whether a request is
sampled is a function of its id, so a stage that serves it inside a coalesced call (coalesce.py, where
Serve stamps the call's own id) can log that id too: `CURRENT_REQUEST` carries it from the ingress's
handler to the stage calls made on its behalf. No ray import.
"""

from __future__ import annotations

import logging
import random
import zlib
from contextvars import ContextVar
from typing import Any

from serve_app.request.stages.scored import Scored
from serve_app.telemetry.series import outcome_of

SERVE_LOGGER = "ray.serve"
# The id of the request the current task serves (set by the ingress's handler; tasks inherit it).
CURRENT_REQUEST: ContextVar[str | None] = ContextVar("recsys_request_id", default=None)


def serving(request_id: str) -> None:
    """The current task serves this request (its stage calls can name it). A function, not the
    ContextVar, is what the ingress refers to: Serve pickles the ASGI app, and a ContextVar cannot be."""
    CURRENT_REQUEST.set(request_id)


class RequestLog:
    def __init__(
        self, sample_rate: float, topology: str, logger: logging.Logger | None = None, seed: int | None = None
    ) -> None:
        self.sample_rate, self.topology = sample_rate, topology
        self.logger = logger or logging.getLogger(SERVE_LOGGER)
        self.rng = random.Random(seed)

    def configure(self, sample_rate: float) -> None:
        self.sample_rate = sample_rate

    def sampled(self, request_id: str | None) -> bool:
        """The same answer for the same id, in every replica: a hash of the id under the rate (a
        request without an id: a random draw)."""
        if self.sample_rate >= 1 or self.sample_rate <= 0:
            return self.sample_rate >= 1
        if request_id is None:
            return self.rng.random() < self.sample_rate
        return zlib.crc32(request_id.encode()) < self.sample_rate * 2**32

    def answered(self, request_id: str, user_id: int, k: int, result: Scored, elapsed_ms: float) -> bool:
        """Log an answered request when it is sampled; True if it was."""
        if not self.sampled(request_id):
            return False
        outcome, reason = outcome_of(result)
        self._emit(
            outcome,
            {
                "request_id": request_id,
                "outcome": outcome,
                "reason": reason,
                "user_id": user_id,
                "k": k,
                "items": len(result.item_ids[:k]),
                "bundle_version": result.bundle_version,
                "fallback": result.fallback,
                "degraded_reason": result.reason,
                "timings_ms": {**{s: round(ms, 3) for s, ms in result.timings_ms.items()}},
                "total_ms": round(elapsed_ms, 3),
                "filtered": dict(result.filtered),
                "topology": self.topology,
            },
        )
        return True

    def refused(self, request_id: str | None, status: int, code: str) -> bool:
        """Log a request answered with an error when it is sampled; True if it was."""
        if not self.sampled(request_id):
            return False
        outcome = "rejected" if status >= 500 else "invalid"
        self._emit(
            outcome,
            {
                "request_id": request_id,
                "outcome": outcome,
                "reason": code,
                "status": status,
                "topology": self.topology,
            },
        )
        return True

    def _emit(self, outcome: str, fields: dict[str, Any]) -> None:
        self.logger.info(
            "request %s %s", fields["request_id"], outcome, extra={"recsys": fields, "log_to_stderr": False}
        )


def log_coalesced(logger: logging.Logger, stage: str, traced: list[str], batch: int) -> None:
    """In a stage: one line naming the sampled requests a coalesced call carried, so `grep <id>`
    finds the stage's part of each (Serve stamps the call's own id on its lines)."""
    if traced:
        fields = {"stage": stage, "request_ids": traced, "batch": batch}
        logger.info(
            "coalesced call for %s", " ".join(traced), extra={"recsys_batch": fields, "log_to_stderr": False}
        )
