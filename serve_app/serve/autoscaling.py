"""The autoscaling policy every deployment on the request path names in its `autoscaling_config`:

    autoscaling_config:
      policy: {policy_function: serve_app.serve.autoscaling:queue_depth}

Serve's own rule (replicas = requests in flight / `target_ongoing_requests`) over a fuller count of the
requests: an Ingress adds the queue at the front door, which Serve cannot see (HAProxy holds it until a
replica has a free slot, so behind the door a replica never holds more than the door's
`per_replica_in_flight`); a graph stage counts the requests inside its coalesced calls rather than the
calls (serve_app/telemetry/load_signal.py). Serve's wrapper applies min/max_replicas, the scaling
factors and upscale/downscale_delay_s to the figure (docs/decisions.md, "Autoscaling on queue depth").
"""

from __future__ import annotations

from typing import Any

from ray.serve.config import AutoscalingContext

from serve_app.telemetry.load_signal import desired_replicas

DOOR_QUEUE = "door_queue"  # an Ingress's record_autoscaling_stats: the door's queue it was told of
ROWS_IN_FLIGHT = "rows_in_flight"  # a stage's: the requests it holds, however batched into calls


def queue_depth(ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
    metrics = ctx.aggregated_metrics or {}
    rows = metrics.get(ROWS_IN_FLIGHT)
    # A stage's requests: those in its calls, or (uncoalesced, one request a call) its calls, which
    # include the ones waiting in @serve.batch; each is at most the other count, so the larger.
    in_flight = max(sum(rows.values()), ctx.total_num_requests) if rows else ctx.total_num_requests
    # Every Ingress replica hears the same door: its queue counts once, not once per replica.
    waiting = max((metrics.get(DOOR_QUEUE) or {}).values(), default=0.0)
    target = ctx.config.get_target_ongoing_requests()
    desired = desired_replicas(in_flight, waiting, target)
    return desired, {"in_flight": round(in_flight, 2), "door_queue": round(waiting, 2)}
