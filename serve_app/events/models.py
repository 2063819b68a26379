"""What a client may send to POST /events, and those events as interactions.

An event is one user's interaction with one item at one time. Every kind counts as an interaction (the
counts, recency, category shares, seen items and the ALS fold-in); only a rating carries a value, which
also feeds `user_avg_rating` and weighs the interaction in the fold-in (core/fold_in.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

MAX_EVENTS = 1_000
# Clocks disagree a little; an event further ahead than this is a client bug, not a fast clock.
MAX_CLOCK_SKEW = timedelta(minutes=5)
EventKind = Literal["view", "click", "rating"]
EVENT_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"


class Event(BaseModel):
    # strict: "5" is not an int (as in /recommend); the timestamp alone is parsed from its ISO string.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    event_id: str = Field(
        pattern=EVENT_ID_PATTERN,
        description="Unique per event (1-128 of A-Z a-z 0-9 . _ : -); a repeated id is not applied again",
    )
    user_id: int = Field(ge=0, le=2**63 - 1)
    item_id: int = Field(ge=0, le=2**63 - 1)
    event: EventKind = Field(description="view, click or rating")
    timestamp: AwareDatetime = Field(
        strict=False, description="ISO 8601 with a timezone, e.g. 2026-11-30T12:00:00Z; not in the future"
    )
    value: float | None = Field(
        None, ge=0.5, le=5.0, description="The rating (0.5-5): required for rating events, absent otherwise"
    )

    @model_validator(mode="after")
    def _check(self) -> Event:
        if self.event == "rating" and self.value is None:
            raise ValueError("a rating event needs a value between 0.5 and 5")
        if self.event != "rating" and self.value is not None:
            raise ValueError(f"a {self.event} event carries no value (only rating events do)")
        if self.timestamp > datetime.now(UTC) + MAX_CLOCK_SKEW:
            raise ValueError(
                f"timestamp {self.timestamp.isoformat()} is in the future; send when the event happened"
            )
        return self

    @property
    def ts(self) -> int:
        """Unix seconds, the unit of the interaction log."""
        return int(self.timestamp.timestamp())

    @property
    def rating(self) -> float:
        """The value, NaN for an unrated event (a view, a click)."""
        return float("nan") if self.value is None else float(self.value)


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS, description="1-1000 events")


class EventsResponse(BaseModel):
    accepted: int = Field(description="Events applied and stored by this call")
    duplicates: int = Field(description="Events whose event_id was already applied (not applied again)")


def interactions(events: Iterable[Event]) -> pd.DataFrame:
    """Events as interaction-log rows: user_id, item_id, rating (NaN when unrated), ts (unix s)."""
    events = list(events)
    return pd.DataFrame(
        {
            "user_id": np.array([e.user_id for e in events], dtype=np.int64),
            "item_id": np.array([e.item_id for e in events], dtype=np.int64),
            "rating": np.array([e.rating for e in events], dtype=np.float32),
            "ts": np.array([e.ts for e in events], dtype=np.int64),
        }
    )


def split_new(events: Sequence[Event], known: set[str] | frozenset[str]) -> tuple[list[Event], int]:
    """The events not applied before (first of each id in this batch) and how many were duplicates."""
    fresh: list[Event] = []
    ids: set[str] = set()
    for e in events:
        if e.event_id in known or e.event_id in ids:
            continue
        ids.add(e.event_id)
        fresh.append(e)
    return fresh, len(events) - len(fresh)
