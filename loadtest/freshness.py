"""Freshness lag: from an event's 202 to the first answer that reflects it, on a served app.

    python -m loadtest.freshness [--config cluster/serve_config.yaml] [--ttl 30] [--users 20]
                                 [--load 4] [--bundle artifacts/current] [--repo feature_repo]
                                 [--throughput-optimized]

For each of `--users` known users: ask for their top item, POST /events a view of it, then ask again
every 10 ms until the item is gone (the seen filter has the event). The lag is the time from the
202 to that answer; the POST's own latency is reported next to it. `--load N` keeps N closed-loop
clients asking for other users' recommendations meanwhile. The app runs on a Ray head of its own
(loadtest/targets.served_target) over a copy of the Feast repo, so the events reach no real store.
`--ttl` overrides the config's user_features_cache_ttl_s. With `--throughput-optimized` and several
ingress replicas (the colocated config, as `make run` starts it), the events go to one replica's own
port and the answers are asked of another's: the lag of a replica that did not take the events.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import yaml

from loadtest.targets import SERVE_CONFIG, served_target
from serve_app.core.bundle import load_bundle

POLL_S = 0.01


def summarise(seconds: list[float]) -> dict[str, float | int]:
    """p50, p99 and max in milliseconds (NaN when empty), and the count."""
    ms = np.asarray(seconds, float) * 1000
    if not len(ms):
        return {"n": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    return {
        "n": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "max_ms": round(float(ms.max()), 1),
    }


def _top(client: httpx.Client, user: int) -> int:
    return client.post("/recommend", json={"user_id": user, "k": 10}).json()["items"][0]["item_id"]


def _load(base: str, users: list[int], stop: threading.Event, count: list[int]) -> None:
    with httpx.Client(base_url=base, timeout=30) as client:
        i = 0
        while not stop.is_set():
            client.post("/recommend", json={"user_id": users[i % len(users)], "k": 10})
            i += 1
            count[0] += 1


def measure(
    base: str, users: list[int], others: list[int], load: int, timeout_s: float, post_base: str | None = None
) -> dict:
    """`post_base`: where the events go, when not to `base` (another ingress replica)."""
    stop, count = threading.Event(), [0]
    threads = [threading.Thread(target=_load, args=(base, others[i::load], stop, count)) for i in range(load)]
    for t in threads:
        t.start()
    posts, lags, missed = [], [], 0
    started = time.monotonic()
    try:
        with (
            httpx.Client(base_url=base, timeout=30) as client,
            httpx.Client(base_url=post_base or base, timeout=30) as poster,
        ):
            for user in users:
                item = _top(client, user)  # also puts the user's row in the readers' caches
                event = {
                    "event_id": f"fresh-{uuid.uuid4().hex}",
                    "user_id": user,
                    "item_id": item,
                    "event": "view",
                    "timestamp": datetime.now(UTC).isoformat(),
                }
                sent = time.perf_counter()
                response = poster.post("/events", json={"events": [event]})
                accepted = time.perf_counter()
                if response.status_code != 202:
                    raise RuntimeError(f"POST /events answered {response.status_code}: {response.text}")
                posts.append(accepted - sent)
                while _top(client, user) == item:
                    if time.perf_counter() - accepted > timeout_s:
                        missed += 1
                        break
                    time.sleep(POLL_S)
                else:
                    lags.append(time.perf_counter() - accepted)
    finally:
        stop.set()
        for t in threads:
            t.join()
    elapsed = time.monotonic() - started
    return {
        "post_events": summarise(posts),
        "lag_after_202": summarise(lags),
        "not_visible_within_s": {"timeout_s": timeout_s, "n": missed},
        "background_req_per_s": round(count[0] / elapsed, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.freshness", description=__doc__)
    p.add_argument("--config", type=Path, default=SERVE_CONFIG)
    p.add_argument("--ttl", type=float, help="user_features_cache_ttl_s (default: the config's)")
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--load", type=int, default=0, help="closed-loop clients of other users meanwhile")
    p.add_argument("--timeout", type=float, default=40.0, help="give up on one event after this long")
    p.add_argument("--bundle", type=Path, default=Path("artifacts/current"))
    p.add_argument("--repo", type=Path, default=Path("feature_repo"))
    p.add_argument("--throughput-optimized", action="store_true", help="direct ingress (make run's)")
    args = p.parse_args(argv)
    bundle = args.bundle.resolve()
    known = load_bundle(bundle, ()).manifest  # checked before a cluster is started
    history_users = np.load(bundle / "history.npz")["user_ids"]
    users = [int(u) for u in history_users[: args.users]]
    others = [int(u) for u in history_users[args.users : args.users + 200]] or users
    with tempfile.TemporaryDirectory(prefix="recsys-freshness-") as tmp:
        work = Path(tmp)
        repo = work / "feature_repo"
        shutil.copytree(args.repo, repo, ignore=shutil.ignore_patterns("events.jsonl*"))
        config = yaml.safe_load(args.config.read_text())
        if args.ttl is not None:
            config["applications"][0]["args"]["user_features_cache_ttl_s"] = args.ttl
        (work / "serve_config.yaml").write_text(yaml.safe_dump(config))
        direct = args.throughput_optimized
        with served_target(bundle, repo, work, work / "serve_config.yaml", direct) as (_, _, info):
            ports = info["ports"]
            base, post_base = (f"http://127.0.0.1:{p}" for p in (ports[-1], ports[0]))
            result = measure(base, users, others, args.load, args.timeout, post_base)
    ttl = config["applications"][0]["args"].get("user_features_cache_ttl_s")
    where = "another ingress replica" if len(ports) > 1 else "the same ingress"
    out = {"bundle": known["version"], "config": str(args.config), "ttl_s": ttl, "answers_from": where}
    print(json.dumps({**out, **result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
