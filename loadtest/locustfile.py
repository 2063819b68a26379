"""The benchmark's request mix for locust users (FastHttpUser, closed loop).

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --headless -u 64 -r 64 -t 30s \\
        --processes 2 --only-summary

Same mix as `python -m loadtest.bench` (loadtest/mix.py): Zipf-like activity over the bundle's history
users, 5% unknown users, 10% of requests with exclude_item_ids, 5% with debug timings. The bundle whose
users are drawn comes from LOADTEST_BUNDLE (default artifacts/current). Loopback hosts only.
"""

from __future__ import annotations

import itertools
import os
import random
import sys
from pathlib import Path
from urllib.parse import urlparse

from locust import FastHttpUser, constant, task

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # locust puts only loadtest/ on the path; `loadtest.mix` needs the root

from loadtest import mix  # noqa: E402

BUNDLE = Path(os.environ.get("LOADTEST_BUNDLE", ROOT / "artifacts" / "current")).resolve()
USERS, ITEMS = mix.bundle_ids(BUNDLE)
KNOWN = set(USERS.tolist())
HEADERS = {"Content-Type": "application/json"}


class RecommendUser(FastHttpUser):
    wait_time = constant(0)  # closed loop: the next request leaves when the answer arrives

    def on_start(self) -> None:
        if urlparse(self.host or "").hostname not in ("127.0.0.1", "localhost"):
            raise RuntimeError(f"refusing to load-test {self.host}: this harness only targets 127.0.0.1")
        # Each simulated user replays its own seeded slice of the mix, so users do not move in lockstep.
        spec = mix.MixSpec(seed=random.randrange(2**31))
        self.requests = itertools.cycle(mix.generate(USERS, ITEMS, 2_000, spec))

    @task
    def recommend(self) -> None:
        r = next(self.requests)
        name = "/recommend known" if r.user_id in KNOWN else "/recommend unknown"
        with self.client.post(
            "/recommend", data=r.body(), headers=HEADERS, name=name, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
            elif b'"degraded":true' in (response.content or b""):
                response.failure("degraded answer")
