"""The append-only log of accepted events: the durable record, and what makes ingestion idempotent.

One JSON object per line, fsync'd before an event is acknowledged. Every process that writes it (the
EventWriter replica, a second one, a test) holds an exclusive `flock` on `<log>.lock` while it checks
ids and appends, and first reads what others appended since its last look, so two writers never apply
one event_id twice. A line without its newline is a write that crashed before it was acknowledged: it
is cut off at the next write. The ids of a restart come from the file itself, not from memory.
"""

from __future__ import annotations

import fcntl
import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from serve_app.events.models import Event, interactions

LOG_NAME = "events.jsonl"


def event_log_path(repo: str | Path) -> Path:
    """The log lives next to the Feast sources (`<repo>/data/`): the EventWriter appends to it and
    `recsys build` reads it (offline/logged_events.py); a build rewrites the sources, never the log."""
    return Path(repo) / "data" / LOG_NAME


class EventLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._offset = 0  # bytes of the file already read into memory
        self._ids: set[str] = set()
        # Each user's events with the byte offset of their line: a bundle built from the log up to
        # some offset already holds the events before it (`events_of(after=...)`).
        self._by_user: dict[int, list[tuple[int, Event]]] = defaultdict(list)
        self._held = False

    @contextmanager
    def locked(self) -> Iterator[EventLog]:
        """Exclusive access across processes, with everything appended so far read in."""
        with self._lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._held = True
            try:
                self._catch_up()
                yield self
            finally:
                self._held = False
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _require_lock(self) -> None:
        if not self._held:
            raise RuntimeError("EventLog: take locked() first")

    def _catch_up(self) -> None:
        if not self.path.exists():
            self._offset = 0
            return
        with self.path.open("rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # complete lines only
        if end < len(data):  # a write that crashed before its newline was never acknowledged
            os.truncate(self.path, self._offset + end)
        at = self._offset
        for line in data[:end].splitlines(keepends=True):
            if line.strip():
                self._remember(at, Event.model_validate_json(line))
            at += len(line)
        self._offset += end

    def _remember(self, offset: int, event: Event) -> None:
        self._ids.add(event.event_id)
        self._by_user[event.user_id].append((offset, event))

    @property
    def size(self) -> int:
        """Bytes of the log read so far (every accepted event, under the lock)."""
        return self._offset

    def all_events(self) -> list[Event]:
        """Every accepted event (what a build adds to its interaction log)."""
        self._require_lock()
        return [e for _, e in sorted(p for events in self._by_user.values() for p in events)]

    def known_ids(self) -> frozenset[str]:
        self._require_lock()
        return frozenset(self._ids)

    def events_of(self, user_id: int, after: int = 0) -> list[Event]:
        """The user's logged events from byte `after` on, in the order they were accepted."""
        self._require_lock()
        return [e for offset, e in self._by_user.get(user_id, ()) if offset >= after]

    def interactions_of(self, user_id: int, extra: Sequence[Event] = (), after: int = 0) -> pd.DataFrame:
        """The user's logged events (from byte `after` on) plus `extra`, as interaction rows."""
        return interactions([*self.events_of(user_id, after), *extra])

    def append(self, events: Sequence[Event]) -> int:
        """Write and fsync `events`; returns the offset to `truncate` to if applying them fails. They
        join the in-memory view only at the next `commit`."""
        self._require_lock()
        start = self.path.stat().st_size if self.path.exists() else 0
        payload = "".join(e.model_dump_json() + "\n" for e in events).encode()
        with self.path.open("ab") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        return start

    def commit(self) -> None:
        """Read the appended events in (they are applied)."""
        self._require_lock()
        self._catch_up()

    def truncate(self, offset: int) -> None:
        """Take back what `append` wrote from `offset` on (applying it failed: it was never accepted)."""
        self._require_lock()
        os.truncate(self.path, offset)
        with self.path.open("ab") as fh:
            os.fsync(fh.fileno())
