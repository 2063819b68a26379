"""A bundle: one immutable, versioned directory holding everything serving needs, and its loader.

Everything that must agree (index, ranker, item snapshot, fallback list, history) travels together and
is checked together: checksums, dimensions, and feature names against serve_app/core/features.py. A bundle
that fails a check is refused with a message saying what is wrong, so the previous one keeps serving.
A replica loads only the parts it serves (`parts`); every file's checksum is verified all the same, so
all replicas refuse the same bundles.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import xgboost as xgb

from serve_app.core.artifacts import (
    History,
    ItemIndex,
    ItemSnapshot,
    UserVectors,
    check_ranker_features,
    load_ranker,
)
from serve_app.core.errors import BundleError
from serve_app.core.features import FEATURE_NAMES, ITEM_FEATURES, USER_FEATURES

# 2: the bundle carries its model's user factors and names the model (`manifest["model"]["id"]`).
FORMAT = 2
FILES = ("index.faiss", "user_factors.npz", "ranker.ubj", "items.npz", "popular.npy", "history.npz")
# The item snapshot and the popularity list are small and every replica needs them; these are optional.
# "index" is the retrieval model: the FAISS index and the user factors of the same model. "log": the
# history with each interaction's rating and time (what recomputing a user's features needs).
Part = Literal["index", "ranker", "history", "log"]
ALL_PARTS: frozenset[Part] = frozenset(("index", "ranker", "history"))


@dataclass(frozen=True)
class Bundle:
    path: Path
    version: str
    manifest: dict[str, Any]
    items: ItemSnapshot
    popular_rows: np.ndarray  # fallback order, best first
    loaded_index: ItemIndex | None = None
    loaded_users: UserVectors | None = None
    loaded_ranker: xgb.Booster | None = None
    loaded_history: History | None = None

    @property
    def embedding_dim(self) -> int:
        return int(self.manifest["embedding_dim"])

    @property
    def model_id(self) -> str:
        """The model that produced the index's item vectors (and `users`)."""
        return str(self.manifest["model"]["id"])

    @property
    def index(self) -> ItemIndex:
        return _required(self.loaded_index, "index", self.version)

    @property
    def users(self) -> UserVectors:
        return _required(self.loaded_users, "user factors", self.version)

    @property
    def ranker(self) -> xgb.Booster:
        return _required(self.loaded_ranker, "ranker", self.version)

    @property
    def history(self) -> History:
        return _required(self.loaded_history, "history", self.version)


def _required(part: Any, name: str, version: str) -> Any:
    if part is None:  # a wiring mistake: this replica was not meant to serve that stage
        raise BundleError(f"bundle {version} was loaded without its {name}")
    return part


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bundle(
    staging: Path,
    *,
    index: ItemIndex,
    users: UserVectors,
    ranker: xgb.Booster,
    item_ids: np.ndarray,
    item_columns: dict[str, np.ndarray],
    popular_rows: np.ndarray,
    history: History,
    manifest: dict[str, Any],
) -> None:
    """Write every file and the manifest (with checksums) into an empty staging directory."""
    staging.mkdir(parents=True, exist_ok=False)
    faiss.write_index(index.index, str(staging / "index.faiss"))
    np.savez(
        staging / "user_factors.npz",
        user_ids=users.user_ids.astype(np.int64),
        factors=users.factors.astype(np.float32),
    )
    ranker.save_model(str(staging / "ranker.ubj"))
    np.savez(
        staging / "items.npz",
        item_ids=item_ids.astype(np.int64),
        **{k: np.asarray(v, dtype=np.float64) for k, v in item_columns.items()},
    )
    np.save(staging / "popular.npy", popular_rows.astype(np.int64))
    log = {} if history.ratings is None else {"ratings": history.ratings, "ts": history.ts}
    np.savez(
        staging / "history.npz",
        user_ids=history.user_ids,
        indptr=history.indptr,
        rows=history.rows,
        **log,
    )
    files = {
        name: {"sha256": sha256(staging / name), "bytes": (staging / name).stat().st_size} for name in FILES
    }
    full = {
        **manifest,
        "model": {**manifest.get("model", {}), "id": users.model_id},
        "format": FORMAT,
        "feature_names": list(FEATURE_NAMES),
        "user_feature_names": list(USER_FEATURES),
        "item_feature_names": list(ITEM_FEATURES),
        "n_items": len(item_ids),
        "files": files,
    }
    (staging / "manifest.json").write_text(json.dumps(full, indent=2, sort_keys=True))


def publish(staging: Path, artifacts: Path) -> Path:
    """Move a complete staging directory into bundles/ and point `current` at it, both atomically."""
    version = json.loads((staging / "manifest.json").read_text())["version"]
    final = artifacts / "bundles" / version
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(staging, final)
    point_current(artifacts, final)
    return final


def point_current(artifacts: Path, bundle: Path) -> None:
    """`current` -> bundles/<bundle's name>, atomically (what `serve deploy` of `bundle:
    artifacts/current` and `make run` serve)."""
    link_tmp = artifacts / ".current.tmp"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    os.symlink(Path("bundles") / bundle.name, link_tmp)
    os.replace(link_tmp, artifacts / "current")


def artifacts_of(bundle: Path) -> Path | None:
    """The artifacts directory a published bundle lies in (…/bundles/<version>), or None."""
    bundle = bundle.resolve()
    return bundle.parent.parent if bundle.parent.name == "bundles" else None


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


def resolve_current(artifacts: Path) -> Path:
    current = artifacts / "current"
    if not current.exists():
        raise BundleError(f"{current}: no current bundle; build one with `make build` (or `recsys build`)")
    return current.resolve()


def _diff(theirs: tuple[str, ...], ours: tuple[str, ...]) -> str:
    missing = [n for n in ours if n not in theirs]
    unknown = [n for n in theirs if n not in ours]
    if not missing and not unknown:
        return f"same names in another order (bundle {list(theirs)})"
    return f"bundle lacks {missing}, has unknown {unknown} (rebuild the bundle with this code)"


def _fail(path: Path, what: str) -> BundleError:
    return BundleError(f"bundle {path} refused: {what}")


def load_bundle(path: str | Path, parts: Collection[Part] = ALL_PARTS) -> Bundle:
    """Load and verify a bundle with the optional `parts` a replica serves; raise BundleError naming
    the first thing that is wrong."""
    path = Path(path).resolve()
    manifest = _verified_manifest(path)
    try:
        index, users = None, None
        if "index" in parts:
            params = manifest.get("index", {})
            index = ItemIndex(
                faiss.read_index(str(path / "index.faiss")),
                params.get("mips_max_norm"),
                params.get("query_norm"),
            )
            with np.load(path / "user_factors.npz", allow_pickle=False) as npz:
                users = UserVectors(str(manifest["model"]["id"]), npz["user_ids"], npz["factors"])
        ranker = load_ranker(str(path / "ranker.ubj")) if "ranker" in parts else None
        with np.load(path / "items.npz", allow_pickle=False) as npz:
            items = ItemSnapshot(npz["item_ids"], {name: npz[name] for name in ITEM_FEATURES})
        popular = np.load(path / "popular.npy", allow_pickle=False)
        history = None
        if "history" in parts or "log" in parts:
            with np.load(path / "history.npz", allow_pickle=False) as npz:
                if "log" in parts and "ratings" not in npz.files:
                    raise _fail(path, "history.npz has no interaction log (built before events; rebuild it)")
                log = (npz["ratings"], npz["ts"]) if "log" in parts else (None, None)
                history = History(npz["user_ids"], npz["indptr"], npz["rows"], *log)
    except (RuntimeError, ValueError, KeyError, OSError, xgb.core.XGBoostError) as exc:
        raise _fail(path, f"an artifact could not be read ({exc})") from exc
    _check_consistent(path, manifest, index, users, ranker, items, popular, history)
    return Bundle(path, str(manifest["version"]), manifest, items, popular, index, users, ranker, history)


def _verified_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise _fail(path, "manifest.json is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise _fail(path, f"manifest.json is not valid JSON ({exc})") from exc
    if manifest.get("format") != FORMAT:
        raise _fail(
            path,
            f"format {manifest.get('format')!r}, this server reads format {FORMAT} "
            "(rebuild it with `make build`)",
        )
    if not isinstance(manifest.get("model"), dict) or not manifest["model"].get("id"):
        raise _fail(path, "manifest.json does not name the model of its vectors (model.id)")
    for name in FILES:
        expected = manifest.get("files", {}).get(name, {}).get("sha256")
        if not (path / name).is_file():
            raise _fail(path, f"{name} is missing")
        if expected is None or sha256(path / name) != expected:
            raise _fail(path, f"{name} does not match its checksum in manifest.json (corrupt or altered)")
    for key, ours in (
        ("feature_names", FEATURE_NAMES),
        ("user_feature_names", USER_FEATURES),
        ("item_feature_names", ITEM_FEATURES),
    ):
        theirs = tuple(manifest.get(key, ()))
        if theirs != ours:
            raise _fail(
                path, f"{key} in manifest.json differ from serve_app/core/features.py: {_diff(theirs, ours)}"
            )
    return manifest


def _check_consistent(
    path: Path,
    manifest: dict[str, Any],
    index: ItemIndex | None,
    users: UserVectors | None,
    ranker: xgb.Booster | None,
    items: ItemSnapshot,
    popular: np.ndarray,
    history: History | None,
) -> None:
    """The loaded parts agree with each other and with the manifest (parts not loaded are covered by
    their checksums: they are the files the build verified)."""
    if ranker is not None:
        try:
            check_ranker_features(ranker)
        except ValueError as exc:
            raise _fail(path, str(exc)) from exc
    n = len(items.item_ids)
    if manifest.get("n_items") != n:
        raise _fail(path, f"item snapshot holds {n} items, manifest {manifest.get('n_items')}")
    if index is not None:
        dim = manifest.get("embedding_dim")
        if index.d != dim:
            raise _fail(path, f"index dimension is {index.d}, manifest embedding_dim is {dim}")
        if index.ntotal != n:
            raise _fail(path, f"index holds {index.ntotal} items, item snapshot {n}")
    if users is not None:
        dim = manifest.get("embedding_dim")
        if users.factors.ndim != 2 or users.factors.shape != (len(users.user_ids), dim):
            raise _fail(path, f"user factors have shape {users.factors.shape}, expected (n_users, {dim})")
        if len(users.user_ids) > 1 and not (np.diff(users.user_ids) > 0).all():
            raise _fail(path, "user_factors.npz user ids are not sorted and unique")
    for name, col in items.columns.items():
        if col.shape != (n,):
            raise _fail(path, f"item feature {name} has {col.shape[0]} rows, expected {n}")
    if len(popular) == 0 or popular.min() < 0 or popular.max() >= n:
        raise _fail(path, "popular.npy is empty or points outside the item snapshot")
    if history is not None and (
        len(history.indptr) != len(history.user_ids) + 1 or (len(history.rows) and history.rows.max() >= n)
    ):
        raise _fail(path, "history.npz is inconsistent with the item snapshot")
    if (
        history is not None
        and history.ratings is not None
        and (history.ratings.shape != history.rows.shape or np.shape(history.ts) != history.rows.shape)
    ):
        raise _fail(path, "history.npz ratings and ts are not aligned with its rows")
