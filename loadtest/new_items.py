"""Time from a new item's arrival to its first recommendation, against a running service (`make run`).

    python -m loadtest.new_items [--fans 5] [--k 100] [--url http://127.0.0.1:8000]

A target user and the `--fans` users whose vectors are closest to theirs (the serving bundle's own
model); a new item (an id the bundle does not hold) in a movies.csv row; then, timed: the fans rate it
through POST /events (the arrival), `recsys items add --apply` folds it in and every replica takes it,
and the target's answers (top `--k`) are polled until the item shows. Prints one JSON line. It adds
an item to the running service for real (events in the log, a delta deployed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

from serve_app.core.bundle import Bundle, load_bundle

RECSYS = Path(sys.executable).parent / "recsys"


def closest_users(bundle: Bundle, row: int, n: int) -> tuple[int, list[int]]:
    """The bundle's user at `row` and the n users whose vectors are closest (cosine) to theirs."""
    users = bundle.users
    unit = users.factors / np.linalg.norm(users.factors, axis=1, keepdims=True)
    order = np.argsort(-(unit @ unit[row]))
    target = int(users.user_ids[row])
    return target, [int(u) for u in users.user_ids[order] if u != target][:n]


def rating_events(user_ids: list[int], item_id: int) -> list[dict]:
    """Each user rates the item 5, now (POST /events bodies)."""
    now = datetime.now(UTC).isoformat()
    return [
        {
            "event_id": uuid.uuid4().hex,
            "user_id": u,
            "item_id": item_id,
            "event": "rating",
            "value": 5.0,
            "timestamp": now,
        }
        for u in user_ids
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.new_items", description=__doc__.split("\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--fans", type=int, default=5, help="similar users who rate the new item")
    p.add_argument("--k", type=int, default=100, help="answer size polled for the item")
    p.add_argument("--target-row", type=int, default=11, help="which of the bundle's users is the target")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"), help="where the served bundle lies")
    args = p.parse_args(argv)
    version = httpx.get(f"{args.url}/version", timeout=10).json()["bundle_version"].split("+", 1)[0]
    bundle = load_bundle(args.artifacts / "bundles" / version, ("index",))
    target, fans = closest_users(bundle, args.target_row, args.fans)
    new_id = int(bundle.items.item_ids.max()) + 1 + int(time.time()) % 100_000  # new in every run
    movies = Path(tempfile.mkdtemp()) / "movies.csv"
    movies.write_text(f"movieId,title,genres\n{new_id},Arrived Today (2026),Drama\n")
    events = rating_events(fans, new_id)
    t0 = time.monotonic()
    posted = httpx.post(f"{args.url}/events", json={"events": events}, timeout=30)
    posted.raise_for_status()
    t1 = time.monotonic()
    added = subprocess.run(
        [str(RECSYS), "items", "add", str(movies), "--apply"], capture_output=True, text=True
    )
    if added.returncode != 0:
        raise SystemExit(f"recsys items add failed: {added.stderr[-1000:]}")
    t2 = time.monotonic()
    rank = None
    while time.monotonic() - t2 < args.timeout:
        body = httpx.post(f"{args.url}/recommend", json={"user_id": target, "k": args.k}, timeout=30).json()
        ids = [i["item_id"] for i in body["items"]]
        if new_id in ids:
            rank = ids.index(new_id) + 1
            break
        time.sleep(0.05)
    t3 = time.monotonic()
    result = {
        "bundle": version["bundle_version"],
        "served": body["bundle_version"],
        "item_id": new_id,
        "fans": len(fans),
        "target_user": target,
        "k": args.k,
        "events_ms": round((t1 - t0) * 1000, 1),
        "items_add_apply_s": round(t2 - t1, 2),
        "arrival_to_first_recommendation_s": round(t3 - t0, 2) if rank else None,
        "rank": rank,
    }
    print(json.dumps(result))
    return 0 if rank else 1


if __name__ == "__main__":
    raise SystemExit(main())
