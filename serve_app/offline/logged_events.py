"""The events the service accepted, added to a build's interaction log (so a rebuild keeps them).

POST /events appends every accepted event to the event log (serve_app/events/log.py); Feast's pushed
offline rows do not survive a build, which rewrites the sources from the interaction log, so the log
is what a build must read. Events join the log as the loader combines one: sorted by time, one
interaction per (user, item), the latest kept. An event of an item the catalogue (movies.csv) does not
have is skipped and counted, as the loader skips such ratings. The manifest records how many bytes of
the log the bundle holds, so serving applies only the events after them on top of it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from serve_app.events.log import EventLog
from serve_app.events.models import interactions
from serve_app.offline.data import Interactions


def with_logged_events(data: Interactions, log_path: Path) -> tuple[Interactions, dict[str, Any]]:
    """`data` with every event of the log at `log_path` as an interaction, and what was added (for
    the manifest's data_source)."""
    if not log_path.exists():
        return data, {"event_log_bytes": 0, "n_events": 0, "skipped_events": 0}
    log = EventLog(log_path)
    with log.locked():  # a writer's half-written batch is never read
        events, size = log.all_events(), log.size
    frame = interactions(events)
    known = frame["item_id"].isin(data.items["item_id"]).to_numpy()
    ratings = pd.concat([data.ratings, frame[known]], ignore_index=True)
    ratings = ratings.sort_values("ts", kind="stable").drop_duplicates(["user_id", "item_id"], keep="last")
    info = {
        "event_log": str(log_path.resolve()),
        "event_log_bytes": size,
        "n_events": len(events),
        "skipped_events": int((~known).sum()),
    }
    return replace(data, ratings=ratings.reset_index(drop=True)), info
