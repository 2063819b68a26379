"""User-feature reads from the Redis online store against the SQLite one, through the serving reader.

    python -m loadtest.store_bench                       # the checkout's feature_repo (after make build)
    python -m loadtest.store_bench --repo DIR --reads 2000 --down-reads 200

Copies the Feast repo (built and materialized into SQLite) to a temp dir, starts a redis-server on a
loopback port and loads it with the Feast CLI, then times single-user reads through
`UserFeatureReader.aget` with the cache off (every read goes to the store), alternating the two
stores over the same users. Then what a dead Redis costs a read under the 50 ms feature deadline:
killed (connections refused) and paused with SIGSTOP (connections hang). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from harness import redis_server
from harness.redis_server import REDIS_ENV, REDIS_YAML
from loadtest.stats import latency_summary
from serve_app.core.settings import SERVING_DEFAULTS
from serve_app.offline import feast_ops
from serve_app.request.stages.user_features import UserFeatureReader, feast_fetcher

ROOT = Path(__file__).resolve().parents[1]
NO_CACHE = {"user_features_cache_ttl_s": 0}


def timed_reads(reader: UserFeatureReader, users: np.ndarray, loop: asyncio.AbstractEventLoop) -> list[float]:
    out = []
    for user in users:
        start = time.perf_counter()
        loop.run_until_complete(reader.aget(int(user)))
        out.append((time.perf_counter() - start) * 1000)
    return out


def row(label: str, ms: list[float], note: str = "") -> str:
    s = latency_summary(ms)
    return f"| {label} | {len(ms)} | {s['p50']:.2f} | {s['p99']:.2f} | {s['max']:.2f} | {note} |"


def run(repo: Path, reads: int, down_reads: int, seed: int) -> str:
    work = Path(tempfile.mkdtemp(prefix="store-bench-"))
    server = None
    try:
        copy = shutil.copytree(repo, work / "repo")  # the bench leaves the checkout's registries alone
        server = redis_server.start(work / "redis")
        os.environ[REDIS_ENV] = server.address
        feast_ops.load_online_store(copy, copy / REDIS_YAML, {REDIS_ENV: server.address}, fresh=True)
        ids = pd.read_parquet(copy / "data" / "user_features.parquet", columns=["user_id"])[
            "user_id"
        ].unique()
        users = np.random.default_rng(seed).choice(ids, size=reads)
        long_deadline = SERVING_DEFAULTS.with_overrides({**NO_CACHE, "user_features_timeout_ms": 5_000})
        sqlite = UserFeatureReader(feast_fetcher(copy), long_deadline)
        redis = UserFeatureReader(feast_fetcher(copy, copy / REDIS_YAML), long_deadline)
        loop = asyncio.new_event_loop()
        timed_reads(sqlite, users[:100], loop)  # warm: registry, connections, page cache
        timed_reads(redis, users[:100], loop)
        times: dict[str, list[float]] = {"sqlite": [], "redis": []}
        for start in range(0, reads, 100):  # alternate blocks: both stores see the same machine load
            times["sqlite"] += timed_reads(sqlite, users[start : start + 100], loop)
            times["redis"] += timed_reads(redis, users[start : start + 100], loop)
        deadline = SERVING_DEFAULTS.with_overrides(NO_CACHE)  # the served 50 ms
        down = UserFeatureReader(feast_fetcher(copy, copy / REDIS_YAML), deadline)
        timed_reads(down, users[:10], loop)
        redis_server.kill(server)
        killed = timed_reads(down, users[:down_reads], loop)
        server = redis_server.start(Path(server.dir), server.port)
        redis_server.pause(server, True)
        try:
            paused = timed_reads(down, users[:down_reads], loop)
        finally:
            redis_server.pause(server, False)
        for reader in (sqlite, redis, down):
            reader.close()
        loop.close()
        deadline_ms = deadline.user_features_timeout_ms
        return "\n".join(
            [
                f"{len(ids)} users in the store; `UserFeatureReader.aget`, cache off, one read at a time",
                "",
                "| online store | reads | p50 ms | p99 ms | max ms | |",
                "|---|---|---|---|---|---|",
                row("SQLite (feature_store.yaml)", times["sqlite"]),
                row("Redis (feature_store.redis.yaml)", times["redis"]),
                row("Redis killed", killed, f"degraded: connection refused, {deadline_ms:.0f} ms deadline"),
                row("Redis paused (SIGSTOP)", paused, f"degraded: the {deadline_ms:.0f} ms deadline"),
            ]
        )
    finally:
        if server is not None:
            redis_server.stop(server)
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.store_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--repo", type=Path, default=ROOT / "feature_repo", help="a built Feast repo")
    parser.add_argument("--reads", type=int, default=2_000, help="reads per store")
    parser.add_argument("--down-reads", type=int, default=200, help="reads with Redis killed, and paused")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.repo / "data" / "registry.db").exists():
        parser.error(f"{args.repo} has not been built: run `make build` (or pass --repo)")
    print(run(args.repo, args.reads, args.down_reads, args.seed))


if __name__ == "__main__":
    main()
