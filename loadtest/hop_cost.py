"""What one Serve handle call costs on this machine with no work behind it: the graph's floor.

    python -m loadtest.hop_cost                 # 500 calls per variant
    python -m loadtest.hop_cost --calls 2000 --out loadtest/reports/hop_cost

The graph's critical path is the ingress's own work plus two handle calls in a row (Retriever, then
Ranker; docs/architecture.md, "Topologies"). This measures what those calls cost before any stage work:
a Ray head of its own with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (as `make bench` runs the graph), a `Caller`
replica that calls an `Echo` replica one call at a time (concurrency 1) and times each call where the
ingress would, for each transport Ray's handles offer (gRPC, the default in that mode; by reference
through the object store), with a payload shaped like a retrieval's answer (a `Scored` of 200 candidates
with the ranker's columns) and through a caller-side `@serve.batch`, as serve_app/serve/coalesce.py
sends it. `two hops` is two such batched calls in a row: the least the graph can add to the colocated
setup's p50 at c=1. Writes <out>/<timestamp>/hop_cost.{json,md} and copies them to <out>/latest/."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
N_CANDIDATES = 200
# (name, payload, by reference, through @serve.batch, calls in a row)
VARIANTS: list[tuple[str, str, bool, bool, int]] = [
    ("gRPC, tiny payload", "tiny", False, False, 1),
    ("gRPC, 200 candidates", "candidates", False, False, 1),
    ("by reference, 200 candidates", "candidates", True, False, 1),
    ("gRPC, 200 candidates, @serve.batch (coalesce.py)", "candidates", False, True, 1),
    ("two hops in a row, as the graph's critical path", "candidates", False, True, 2),
]


def candidates_payload() -> Any:
    """What a retrieval hands on: 200 candidates, their scores and the ranker's retrieval columns."""
    from serve_app.core.features import RETRIEVAL_FEATURES
    from serve_app.request.stages.scored import Scored

    rng = np.random.default_rng(0)
    columns = {name: rng.random(N_CANDIDATES, dtype=np.float32) for name in RETRIEVAL_FEATURES}
    ids = rng.choice(1_000_000, N_CANDIDATES, replace=False).astype(np.int64)
    return Scored(ids, rng.random(N_CANDIDATES, dtype=np.float32), "hop-cost", features=columns)


def deploy() -> Any:
    """The Caller/Echo app on the connected cluster; the Caller's handle."""
    from ray import serve

    @serve.deployment(ray_actor_options={"num_cpus": 0.25})
    class Echo:
        async def echo(self, payload: Any) -> Any:
            return payload

    @serve.deployment(ray_actor_options={"num_cpus": 0.25})
    class Caller:
        def __init__(self, echo: Any) -> None:
            self.echo = echo
            batch = serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0, max_concurrent_batches=4)
            self._batched = batch(self._echo_many)

        async def _echo_many(self, payloads: list[Any]) -> list[Any]:
            return await self.echo.options(_by_reference=False).echo.remote(payloads)

        async def measure(
            self, payload: Any, by_reference: bool, batched: bool, hops: int, calls: int
        ) -> list[float]:
            """Milliseconds per round of `hops` calls in a row, `calls` rounds, one at a time."""
            handle = self.echo.options(_by_reference=by_reference)
            out = []
            for _ in range(calls):
                start = time.perf_counter()
                for _ in range(hops):
                    await (self._batched(payload) if batched else handle.echo.remote(payload))
                out.append((time.perf_counter() - start) * 1000)
            return out

    # No HTTP: the calls are made between replicas. Classes defined here travel by value, so the
    # replicas need not import this module.
    serve.start(proxy_location="Disabled")
    return serve.run(Caller.bind(Echo.bind()), name="hop-cost", route_prefix=None)


def run(calls: int, warmup: int = 50) -> dict[str, Any]:
    from harness import cluster, ray_head
    from loadtest.stats import machine

    report: dict[str, Any] = {"machine": machine(), "calls": calls, "warmup": warmup, "variants": []}
    with tempfile.TemporaryDirectory(prefix="hop-cost-") as tmp:
        state_file = Path(tmp) / "cluster.json"
        state = ray_head.start_head(state_file, throughput_optimized=True)
        report["head_pid"] = state["pid"]
        try:
            # The driver only deploys and asks; the calls measured are made inside the Caller replica.
            with ray_head.driver_of(state):
                caller = deploy()
                payloads = {"tiny": [1, 2, 3], "candidates": candidates_payload()}
                for name, payload, by_reference, batched, hops in VARIANTS:
                    args = (payloads[payload], by_reference, batched, hops)
                    caller.measure.remote(*args, warmup).result()
                    ms = np.asarray(caller.measure.remote(*args, calls).result())
                    report["variants"].append(
                        {
                            "name": name,
                            "hops": hops,
                            **{f"p{q}_ms": round(float(np.percentile(ms, q)), 3) for q in (50, 90, 99)},
                        }
                    )
        finally:
            cluster.stop(state_file)
    return report


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Serve handle call, no work behind it (concurrency 1)",
        "",
        f"{m.get('cpu_model')}, {m.get('cores_logical')} logical cores, load average "
        f"{m.get('load_avg_at_start')}; {report['calls']} calls per variant after {report['warmup']} "
        "warm-up calls, "
        "RAY_SERVE_THROUGHPUT_OPTIMIZED=1, caller and callee replicas on one node.",
        "",
        "| variant | p50 ms | p90 ms | p99 ms |",
        "|---|---|---|---|",
    ]
    for v in report["variants"]:
        lines.append(f"| {v['name']} | {v['p50_ms']:.3f} | {v['p90_ms']:.3f} | {v['p99_ms']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from loadtest.chaos import write_report

    p = argparse.ArgumentParser(prog="python -m loadtest.hop_cost", description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=500, help="timed calls per variant (after 50 warm-up calls)")
    p.add_argument("--out", type=Path, default=ROOT / "loadtest" / "reports" / "hop_cost")
    opts = p.parse_args(argv)
    report = run(opts.calls)
    write_report(opts.out, "hop_cost", report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
