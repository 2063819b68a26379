"""Items that arrived after a bundle was built, served without a rebuild (no ray import).

An item delta extends exactly one bundle: its new items' vectors are folded in from their first
interactions against the bundle's own user factors (the ALS item step, the same least squares as a
user's fold-in with the roles swapped), and their ranker features come from `item_rows_at`, the
build's own function. It is a file beside the bundle's (`deltas/<bundle version>/items-<stamp>.npz`
under the artifacts) that the replicas take through `user_config.item_delta`: each appends the items
to its index copy and item snapshot, and serves the result as `<bundle version>+<stamp>`, the version
every answer and GET /version then carry. A delta of another bundle is refused (never combine two
models' vectors); the next build includes the items and their events from the logs.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from serve_app.bundle import Bundle
from serve_app.errors import BundleError, DataError
from serve_app.features import ITEM_FEATURES
from serve_app.fold_in import confidence, fold_in, gram

MIN_KNOWN_USERS = 1  # an item needs interactions of users the model knows to get a vector


@dataclass(frozen=True)
class ItemDelta:
    path: Path
    bundle_version: str  # the one bundle it extends
    model_id: str
    stamp: str
    item_ids: np.ndarray  # int64
    factors: np.ndarray  # float32 (n, dim)
    columns: dict[str, np.ndarray]  # ITEM_FEATURES

    @property
    def version(self) -> str:
        return f"{self.bundle_version}+{self.stamp}"


def new_item_rows(
    bundle: Bundle, items: pd.DataFrame, events: pd.DataFrame, as_of: int
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], list[str]]:
    """(item_ids, factors, columns, skipped) for `items` (item_id, category) not in the bundle, from
    `events` (user_id, item_id, rating, ts: their interactions). Items without an interaction of a user
    the model knows are skipped, with why."""
    from serve_app.offline.feature_tables import item_rows_at

    embedding = bundle.manifest["build_config"]["embedding"]
    users = bundle.users
    known = np.isin(items["item_id"].to_numpy(), bundle.items.item_ids)
    skipped = [f"item {i}: already in bundle {bundle.version}" for i in items["item_id"][known]]
    items = items[~known]
    ids, vectors, kept = [], [], []
    xtx = gram(users.factors)
    for item_id in items["item_id"].to_numpy(np.int64):
        mine = events[events["item_id"] == item_id].drop_duplicates("user_id", keep="last")
        rows = np.searchsorted(users.user_ids, mine["user_id"].to_numpy()).clip(0, len(users.user_ids) - 1)
        rows = np.where(users.user_ids[rows] == mine["user_id"].to_numpy(), rows, -1)
        if int((rows >= 0).sum()) < MIN_KNOWN_USERS:
            skipped.append(f"item {item_id}: no interaction of a user model {bundle.model_id} knows yet")
            continue
        conf = confidence(mine["rating"].to_numpy(), np.zeros(len(mine)), float(embedding["alpha"]), None)
        vectors.append(fold_in(users.factors, xtx, rows, conf, float(embedding["regularization"])))
        ids.append(item_id)
        kept.append(mine)
    ids_arr = np.asarray(ids, dtype=np.int64)
    factors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), bundle.embedding_dim)
    if not len(ids):
        return ids_arr, factors, {n: np.empty(0) for n in ITEM_FEATURES}, skipped
    rows = item_rows_at(pd.concat(kept), items, ids_arr, np.full(len(ids), as_of, np.int64))
    rows = rows.set_index("item_id").reindex(ids_arr)
    return ids_arr, factors, {n: rows[n].to_numpy(np.float64) for n in ITEM_FEATURES}, skipped


def merged(
    previous: ItemDelta, ids: np.ndarray, factors: np.ndarray, columns: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The previous delta's items, then these (an item in both: this newer computation of it)."""
    keep = ~np.isin(previous.item_ids, ids)
    return (
        np.concatenate([previous.item_ids[keep], ids]),
        np.concatenate([previous.factors[keep], factors]).astype(np.float32),
        {n: np.concatenate([previous.columns[n][keep], columns[n]]) for n in ITEM_FEATURES},
    )


def write_item_delta(
    artifacts: Path, bundle: Bundle, ids: np.ndarray, factors: np.ndarray, columns: dict[str, np.ndarray]
) -> Path:
    """Publish the delta under artifacts/deltas/<bundle version>/ (written whole, then renamed)."""
    now = time.time()  # to the millisecond: two deltas a second apart are two versions
    stamp = f"items-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}{int(now * 1000) % 1000:03d}Z"
    folder = artifacts / "deltas" / bundle.version
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stamp}.npz"
    tmp = folder / f".{stamp}.tmp.npz"
    meta = {"bundle_version": bundle.version, "model_id": bundle.model_id, "stamp": stamp}
    np.savez(tmp, item_ids=ids, factors=factors, meta=np.array(json.dumps(meta)), **columns)
    os.replace(tmp, path)
    return path


def load_item_delta(path: str | Path) -> ItemDelta:
    path = Path(path).resolve()
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            columns = {n: npz[n].astype(np.float64) for n in ITEM_FEATURES}
            delta = ItemDelta(
                path,
                meta["bundle_version"],
                meta["model_id"],
                meta["stamp"],
                npz["item_ids"],
                npz["factors"],
                columns,
            )
    except (OSError, KeyError, ValueError) as exc:
        raise BundleError(f"{path}: not an item delta ({exc})") from exc
    if len(delta.factors) != len(delta.item_ids):
        raise BundleError(f"{path}: {len(delta.item_ids)} items but {len(delta.factors)} vectors")
    return delta


def extend(bundle: Bundle, delta: ItemDelta) -> Bundle:
    """The bundle with the delta's items appended: a new Bundle, the one it extends is unchanged."""
    if delta.bundle_version != bundle.version or delta.model_id != bundle.model_id:
        raise BundleError(
            f"{delta.path} extends bundle {delta.bundle_version} (model {delta.model_id}), "
            f"not {bundle.version} (model {bundle.model_id}); make a delta of the serving bundle"
        )
    if np.isin(delta.item_ids, bundle.items.item_ids).any():
        raise BundleError(f"{delta.path}: some of its items are in bundle {bundle.version} already")
    if delta.factors.shape[1:] != (bundle.embedding_dim,):
        raise DataError(f"{delta.path}: vectors of dim {delta.factors.shape[1:]}, not {bundle.embedding_dim}")
    index = bundle.loaded_index.extended(delta.factors) if bundle.loaded_index is not None else None
    manifest = {**bundle.manifest, "item_delta": {"path": str(delta.path), "n_items": len(delta.item_ids)}}
    return replace(
        bundle,
        version=delta.version,
        manifest=manifest,
        items=bundle.items.extended(delta.item_ids, delta.columns),
        loaded_index=index,
    )
