"""Items that arrived after a bundle was built, served without a rebuild: the item delta file.

An item delta extends exactly one bundle with new items' vectors and ranker features (computed by
events/new_items.py from their first interactions). It is a file beside the bundle's
(`deltas/<bundle version>/items-<stamp>.npz` under the artifacts) that the replicas take through
`user_config.item_delta`: each appends the items to its index copy and item snapshot, and serves the
result as `<bundle version>+<stamp>`, the version every answer and GET /version then carry. A delta of
another bundle is refused (never combine two models' vectors); the next build includes the items and
their events from the logs.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from serve_app.core.bundle import Bundle
from serve_app.core.errors import BundleError, DataError
from serve_app.core.features import ITEM_FEATURES


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
    manifest = {**bundle.manifest, "item_delta": {"stamp": delta.stamp, "n_items": len(delta.item_ids)}}
    return replace(
        bundle,
        version=delta.version,
        manifest=manifest,
        items=bundle.items.extended(delta.item_ids, delta.columns),
        loaded_index=index,
    )
