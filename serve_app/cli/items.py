"""`recsys items add MOVIES_CSV`: new items to the serving bundle without a rebuild (events/new_items.py).

    recsys items add new_movies.csv            the delta, from the items' events in the event log
    recsys items add new_movies.csv --apply    ... and every replica serving it (in place)

The file is movies.csv-shaped (movieId,title,genres). An item needs at least one logged event of a
user the model knows (`POST /events` takes events of unknown items: they are logged, and counted once
the item is added); the others are listed as skipped and can be added again later.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from serve_app.cli.service import connect
from serve_app.control import rollout
from serve_app.core import item_delta
from serve_app.core.bundle import load_bundle, resolve_current
from serve_app.core.errors import ConfigError
from serve_app.events import new_items
from serve_app.events.log import EventLog, event_log_path
from serve_app.events.models import interactions
from serve_app.offline.data import read_movies


def add_parser(sub: argparse._SubParsersAction, defaults: dict[str, str]) -> None:
    items = sub.add_parser("items", help="items that arrived after the build: served without a rebuild")
    items_sub = items.add_subparsers(dest="items_command", required=True)
    add = items_sub.add_parser("add", help="fold new items in from their first events; --apply serves them")
    add.add_argument("movies", help="movies.csv-shaped file of the new items (movieId,title,genres)")
    add.add_argument("--bundle", help="the bundle to extend (default: the running service's, else current)")
    add.add_argument("--apply", action="store_true", help="deploy it to the running service (in place)")
    add.add_argument("--repo", default=defaults["repo"], help="the Feast repo whose event log to read")
    add.add_argument("--artifacts", default=defaults["artifacts"])
    add.add_argument("--address", help="Ray dashboard URL (default: the cluster `make run` started here)")
    add.add_argument("--url", help="the service's HTTP address (default: from Serve's http_options)")
    add.add_argument("--timeout", type=float, default=300)
    add.set_defaults(func=run_add, metrics=None, app="recsys")


def _categories(bundle_manifest: dict, items: pd.DataFrame, genres: pd.Series) -> pd.Series:
    """The build's category code of each item's first genre: the codes come from the movies.csv the
    bundle was built from (when it is here); -1 (unknown, as for an item without genres) otherwise."""
    source = Path(bundle_manifest["data_source"]["path"])
    if not (source / "movies.csv").is_file():
        return pd.Series(-1, index=items.index, dtype=np.int64)
    _, categories = read_movies(source / "movies.csv")
    code = {g: i for i, g in enumerate(categories)}
    first = genres.str.split("|", n=1).str[0]
    return first.map(lambda g: code.get(g, -1)).astype(np.int64)


def run_add(args: argparse.Namespace) -> None:
    admin, serving = None, None
    if args.apply or not args.bundle:
        try:
            admin, _ = connect(args)
            serving = admin.serving()
        except (ConfigError, OSError, httpx.HTTPError) as exc:
            if args.apply:
                raise
            print(f"no running service ({exc}); extending the current bundle")
            serving = None
    path = Path(args.bundle) if args.bundle else (Path(serving.main_path) if serving else None)
    if path is None:
        path = resolve_current(Path(args.artifacts))
    bundle = load_bundle(path, ("index",))
    movies = Path(args.movies)
    items, _ = read_movies(movies)
    genres = pd.read_csv(movies, dtype=str)["genres"].fillna("")
    items["category"] = _categories(bundle.manifest, items, genres).to_numpy()
    log = EventLog(event_log_path(args.repo))
    with log.locked():
        events = interactions(e for e in log.all_events() if e.item_id in set(items["item_id"]))
    as_of = max(int(events["ts"].max()) + 1 if len(events) else 0, int(time.time()))
    ids, factors, columns, skipped = new_items.new_item_rows(bundle, items, events, as_of)
    for line in skipped:
        print(f"skipped {line}")
    if not len(ids):
        raise ConfigError("no item to add (see above)")
    if serving is not None and serving.item_delta and Path(serving.main_path).resolve() == bundle.path:
        # Deltas are whole, not stacked: the new one holds the items already added to this bundle too.
        ids, factors, columns = item_delta.merged(
            item_delta.load_item_delta(serving.item_delta), ids, factors, columns
        )
    delta = item_delta.write_item_delta(Path(args.artifacts).resolve(), bundle, ids, factors, columns)
    print(f"item delta {delta}: {len(ids)} items ({', '.join(map(str, ids[:10]))}) from {len(events)} events")
    if not args.apply:
        print(f"to serve it: recsys items add {movies} --apply (or user_config.item_delta: {delta})")
        return
    assert admin is not None and serving is not None
    if Path(serving.main_path).resolve() != bundle.path:
        raise ConfigError(f"the service serves {serving.main_path}, not {bundle.path}: no delta applied")
    app = rollout.with_keys(admin.app_config(admin.details()), item_delta=str(delta))
    version = item_delta.load_item_delta(delta).version
    rollout.apply(admin, app, version, serving.canary, args.timeout)
    print(f"serving {version}: bundle {bundle.version} and {len(ids)} new items")
