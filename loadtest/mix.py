"""The request mix every target gets: power-law user activity, a few unknown users, some excludes.

The same seeded mix is replayed against the floor, the baseline and the served app, so their numbers
differ only by how the stages are hosted, not by which users happened to be asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class MixSpec:
    zipf_s: float = 0.9  # activity exponent: a few users are very active, most are not
    unknown_fraction: float = 0.05  # users the store has never seen (cold-start path)
    exclude_fraction: float = 0.1  # requests that carry exclude_item_ids
    debug_fraction: float = 0.05  # requests that ask for per-stage timings_ms
    k: int = 10
    seed: int = 0


@dataclass(frozen=True)
class Request:
    user_id: int
    k: int
    exclude_item_ids: tuple[int, ...]
    debug: bool

    def body(self) -> bytes:
        return json.dumps(
            {
                "user_id": self.user_id,
                "k": self.k,
                "exclude_item_ids": list(self.exclude_item_ids),
                "debug": self.debug,
            },
            separators=(",", ":"),
        ).encode()


def bundle_ids(bundle: Path) -> tuple[np.ndarray, np.ndarray]:
    """(history user ids, item ids) straight from the bundle's arrays: no need to load FAISS/XGBoost."""
    with np.load(bundle / "history.npz", allow_pickle=False) as npz:
        users = np.asarray(npz["user_ids"], dtype=np.int64)
    with np.load(bundle / "items.npz", allow_pickle=False) as npz:
        items = np.asarray(npz["item_ids"], dtype=np.int64)
    return users, items


def generate(user_ids: np.ndarray, item_ids: np.ndarray, n: int, spec: MixSpec = MixSpec()) -> list[Request]:
    """n requests; user rank r (in a seeded shuffle) is drawn with probability proportional to r^-s."""
    rng = np.random.default_rng(spec.seed)
    ranked = rng.permutation(user_ids)  # who is "most active" must not correlate with id order
    weights = np.arange(1, len(ranked) + 1, dtype=np.float64) ** -spec.zipf_s
    users = ranked[rng.choice(len(ranked), size=n, p=weights / weights.sum())]
    # Unknown ids sit above every known one, so they can never collide with a real user.
    top = int(user_ids.max()) if len(user_ids) else 0
    unknown = rng.random(n) < spec.unknown_fraction
    users = np.where(unknown, top + 1 + rng.integers(0, 1_000_000, n), users)
    out = []
    for i in range(n):
        excl: tuple[int, ...] = ()
        if len(item_ids) and rng.random() < spec.exclude_fraction:
            excl = tuple(int(x) for x in rng.choice(item_ids, size=int(rng.integers(1, 6))))
        out.append(Request(int(users[i]), spec.k, excl, bool(rng.random() < spec.debug_fraction)))
    return out


def http_payloads(requests: list[Request], path: str = "/recommend") -> list[tuple[bytes, bool]]:
    """Raw HTTP/1.1 keep-alive requests, encoded once so the client spends no CPU building them."""
    out = []
    for r in requests:
        body = r.body()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        out.append((head + body, r.debug))
    return out
