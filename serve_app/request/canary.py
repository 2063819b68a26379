"""Which users a canary bundle serves: a stable hash of the user id, salted with the canary's version.

Every process that holds the canary (the ingress, each Retriever and Ranker
replica) decides a user's arm by itself from the same settings, so no arm travels with the request;
the Ranker follows the version its candidates came from (`ServingState.for_version`), which keeps a
request on one bundle even while a rollout reaches the replicas one after another. Salting with the
version means each canary samples its own users: a user unlucky with one canary is not in every one.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

MAIN, CANARY = "main", "canary"
_SCALE = float(2**32)


def share_point(user_id: int, salt: str) -> float:
    """The user's point in [0, 1): uniform over users, the same in every process and every run."""
    return zlib.crc32(f"{salt}:{int(user_id)}".encode()) / _SCALE


def in_canary(user_id: int, share: float, salt: str) -> bool:
    return share > 0 and share_point(user_id, salt) < share


@dataclass(frozen=True)
class Split:
    """`share` of the users (by `share_point` salted with `salt`) go to the canary arm."""

    share: float
    salt: str

    def arm(self, user_id: int) -> str:
        return CANARY if in_canary(user_id, self.share, self.salt) else MAIN
