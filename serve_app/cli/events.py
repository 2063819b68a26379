"""`recsys events FILE`: send a file of events to a running service's POST /events.

Through the service, not around it: the events then take the one path every client's events take
(validation, the event log, the push), and the service's bundle decides the users' new vectors. Each
event is checked here first, so a bad line is named by its line number before anything is sent. A
503 is retried after its Retry-After: ingestion is idempotent by event_id, so a retry never applies
an event twice.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from serve_app.core.errors import DataError, DependencyError
from serve_app.events.models import MAX_EVENTS, Event


@dataclass(frozen=True)
class Sent:
    accepted: int
    duplicates: int
    requests: int


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """Events from a JSON file (a list, or {"events": [...]}) or a JSONL file (one event per line),
    each validated; a DataError names the first bad one by line (JSONL) or position (JSON)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise DataError(f"{path}: {exc.strerror}") from exc
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None  # not one JSON document: JSONL
    if isinstance(whole, list) or (isinstance(whole, dict) and "events" in whole):
        items = whole["events"] if isinstance(whole, dict) else whole
        located = [(f"{path}: event {i}", e) for i, e in enumerate(items)]
    else:
        located = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                located.append((f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{n}: not valid JSON ({exc.msg})") from exc
    for where, event in located:
        try:
            Event.model_validate(event)
        except ValidationError as exc:
            errors = exc.errors()
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}" for e in errors)
            raise DataError(f"{where}: {problems}") from exc
    if not located:
        raise DataError(f"{path}: no events")
    return [event for _, event in located]


def _chunks(events: Sequence[dict[str, Any]], size: int) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(events), size):
        yield events[start : start + size]


def send_events(
    url: str, events: Sequence[dict[str, Any]], batch: int = MAX_EVENTS, retries: int = 5
) -> Sent:
    """POST the events in batches of at most `batch`; a 503 is retried (idempotent), any other error
    stops with the service's message (the batches before it stay applied)."""
    accepted = duplicates = requests = 0
    with httpx.Client(base_url=url.rstrip("/"), timeout=60) as client:
        for chunk in _chunks(events, batch):
            for attempt in range(retries + 1):
                response = client.post("/events", json={"events": list(chunk)})
                requests += 1
                if response.status_code != 503 or attempt == retries:
                    break
                time.sleep(float(response.headers.get("retry-after", 1)))
            if response.status_code != 202:
                message = response.json().get("message", response.text) if response.content else ""
                error = DependencyError if response.status_code >= 500 else DataError
                raise error(
                    f"POST {url}/events answered {response.status_code} after {accepted} accepted: {message}"
                )
            body = response.json()
            accepted += body["accepted"]
            duplicates += body["duplicates"]
    return Sent(accepted, duplicates, requests)


def cmd_events(args: argparse.Namespace) -> None:
    events = read_events(args.file)
    sent = send_events(args.url, events, batch=args.batch)
    print(
        f"{len(events):,} events sent to {args.url}/events in {sent.requests} requests: "
        f"{sent.accepted:,} accepted, {sent.duplicates:,} duplicates (already applied)"
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    events = sub.add_parser("events", help="send a JSON or JSONL file of events to a running service")
    events.add_argument("file", help='JSONL (one event per line), or JSON: a list or {"events": [...]}')
    events.add_argument("--url", default=os.environ.get("RECSYS_URL", "http://127.0.0.1:8000"))
    events.add_argument("--batch", type=int, default=1_000, help="events per request (1-1000)")
    events.set_defaults(func=cmd_events)
