"""Feast through its own CLI (apply, materialize) and SDK (point-in-time training data).

The build shells out to `feast` for apply and materialize-incremental, exactly the commands a data
person runs by hand to refresh the online store, so the documented path is the tested path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import yaml
from feast import FeatureStore

from serve_app.core.errors import ConfigError
from serve_app.core.features import FEATURE_SERVICE, ITEM_FEATURES, USER_FEATURES

USER_VIEW, ITEM_VIEW = "user_features", "item_features"  # feature_repo/definitions.py


def feast_cli(repo: Path, *args: str, fs_yaml: Path | None = None, env: dict[str, str] | None = None) -> str:
    """`feast -c repo [-f fs_yaml] args...`; `env` is added to this process's (REDIS_CONNECTION_STRING)."""
    exe = shutil.which("feast", path=str(Path(sys.executable).parent)) or shutil.which("feast")
    if exe is None:
        raise ConfigError("the `feast` command is not installed in this environment")
    options = ["-c", str(repo), *(["-f", str(Path(fs_yaml).absolute())] if fs_yaml else [])]
    full_env = {**os.environ, **(env or {}), "FEAST_DISABLE_USAGE": "1"}
    proc = subprocess.run([exe, *options, *args], capture_output=True, text=True, env=full_env)
    if proc.returncode != 0:
        raise ConfigError(f"`feast {' '.join(options)} {' '.join(args)}` failed:\n{proc.stderr[-4000:]}")
    return proc.stdout


def apply(repo: Path, fs_yaml: Path | None = None, env: dict[str, str] | None = None) -> None:
    feast_cli(repo, "apply", fs_yaml=fs_yaml, env=env)


def materialize_incremental(
    repo: Path,
    end: datetime | None = None,
    fs_yaml: Path | None = None,
    env: dict[str, str] | None = None,
) -> None:
    end = end or datetime.now(UTC)
    feast_cli(repo, "materialize-incremental", end.strftime("%Y-%m-%dT%H:%M:%S"), fs_yaml=fs_yaml, env=env)


def load_online_store(repo: Path, fs_yaml: Path, env: dict[str, str], fresh: bool = False) -> datetime:
    """`feast apply` + `feast materialize-incremental` into the online store of another
    feature_store.yaml (the Redis one), up to where the default store's last load ended, so both serve
    the same rows (a build stamps serving rows no earlier than the data's end, which may be past now).

    `fresh`: the store was just created, empty; its registry's record of what was loaded (Feast starts
    an incremental load where the last one ended) is removed first. Returns the end of the load.
    """
    if fresh:
        registry = yaml.safe_load(Path(fs_yaml).read_text())["registry"]
        path = Path(registry["path"] if isinstance(registry, dict) else registry)
        (path if path.is_absolute() else repo / path).unlink(missing_ok=True)
    apply(repo, fs_yaml, env)
    end = datetime.now(UTC)
    if (default_end := last_materialized(repo)) is not None:
        end = max(end, default_end.to_pydatetime())
    materialize_incremental(repo, end, fs_yaml, env)
    return end


def last_materialized(repo: Path) -> pd.Timestamp | None:
    """End of the online store's last materialization of the user features (None before the first)."""
    if not (repo / "data" / "registry.db").exists():
        return None
    try:
        end = FeatureStore(repo_path=str(repo)).get_feature_view(USER_VIEW).most_recent_end_time
    except Exception:  # no registry entry yet: nothing was materialized
        return None
    if end is None:
        return None
    ts = pd.Timestamp(end)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def check_feature_service(store: FeatureStore) -> None:
    """The ranker's FeatureService must name exactly the raw features serve_app/core/features.py reads."""
    service = store.get_feature_service(FEATURE_SERVICE)
    names = tuple(f.name for proj in service.feature_view_projections for f in proj.features)
    if names != USER_FEATURES + ITEM_FEATURES:
        raise ConfigError(
            f"FeatureService {FEATURE_SERVICE!r} serves {list(names)}, but serve_app/core/features.py "
            f"transforms {list(USER_FEATURES + ITEM_FEATURES)}: update one to match the other"
        )


def historical_features(
    store: FeatureStore, entities: pd.DataFrame, views: Collection[str] | None = None
) -> pd.DataFrame:
    """Ranker features for (user_id, item_id, event_timestamp) rows, as of each row's timestamp.

    Returns one row per input row, in input order, with the FeatureService's features (of `views`
    only, when given) as columns (NaN where no value was known yet at that row's time).
    Feast's file (Dask) offline store de-duplicates each view's join on that view's join keys plus
    the timestamp, which collapses many (user, item) rows sharing a user and time into one. So each
    view of the service is fetched with its own unique entity rows and merged back here by key.
    """
    service = store.get_feature_service(FEATURE_SERVICE)
    out = entities[["user_id", "item_id", "event_timestamp"]].reset_index(drop=True)
    for projection in service.feature_view_projections:
        if views is not None and projection.name not in views:
            continue
        view = store.get_feature_view(projection.name)
        keys = [column.name for column in view.entity_columns]
        refs = [f"{projection.name_to_use()}:{feature.name}" for feature in projection.features]
        unique = out[[*keys, "event_timestamp"]].drop_duplicates(ignore_index=True)
        fetched = store.get_historical_features(entity_df=unique, features=refs).to_df()
        fetched["event_timestamp"] = pd.to_datetime(fetched["event_timestamp"], utc=True)
        # Feast drops an entity row whose feature rows are all newer than it; point-in-time, those
        # features were unknown, so the left merge below gives them NaN (the ranker's missing value).
        if len(fetched) > len(unique):
            raise RuntimeError(
                f"Feast returned {len(fetched)} rows for {len(unique)} entity rows of {view.name}"
            )
        out = out.merge(fetched, on=[*keys, "event_timestamp"], how="left", validate="many_to_one")
    if len(out) != len(entities):
        raise RuntimeError("historical feature join changed the number of rows")
    return out
