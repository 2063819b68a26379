"""`recsys build`: data -> feast apply -> materialize -> embeddings -> index -> ranker -> eval -> bundle.

Two models are trained: an evaluation model on each user's earlier interactions (it produces the
ranker's training candidates and the evaluation table) and the serving model on everything. The ranker
and the figures come from the first; the bundle serves the second, as is usual after validation.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from feast import FeatureStore

from serve_app import bundle as bundle_mod
from serve_app.artifacts import History
from serve_app.config import BuildConfig
from serve_app.features import ITEM_FEATURES
from serve_app.offline import feast_ops, feature_tables
from serve_app.offline.data import Interactions
from serve_app.offline.embeddings import Embeddings, train_als
from serve_app.offline.evaluation import evaluate_lists, format_table
from serve_app.offline.index import build_index, index_recall
from serve_app.offline.split import TemporalSplit, temporal_split
from serve_app.offline.training import candidate_frame, matrix_from_frame, train_ranker
from serve_app.stages.rank import score


@dataclass
class Timer:
    seconds: dict[str, float] = field(default_factory=dict)
    log: bool = True

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        if self.log:
            print(f"[build] {name} ...", flush=True)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)


def _als(ratings: pd.DataFrame, cfg: BuildConfig, progress: bool) -> Embeddings:
    return train_als(ratings, cfg.embedding, cfg.seed, progress)


def _default_snapshots(n_items: int) -> int:
    # Keep the item source around 2M rows: point-in-time precision where the catalogue allows it.
    return int(np.clip(2_000_000 // max(n_items, 1), 2, 24))


def write_feature_sources(
    data: Interactions,
    split: TemporalSplit,
    eval_emb: Embeddings,
    final_emb: Embeddings,
    repo: Path,
    stamp: pd.Timestamp,
    n_snapshots: int,
) -> None:
    ratings = data.ratings
    data_end = int(ratings["ts"].max()) + 1
    groups = np.concatenate([split.ranker_users, split.eval_users])
    users = pd.concat(
        [
            feature_tables.user_rows_at_cutoffs(
                split.train, data.items, split.cutoff.loc[groups], eval_emb.user_factors, eval_emb.user_ids
            ),
            feature_tables.user_rows_final(
                ratings, data.items, final_emb.user_factors, final_emb.user_ids, data_end, stamp
            ),
        ],
        ignore_index=True,
    )
    grid = feature_tables.item_snapshot_times(split.cutoff.loc[groups].to_numpy(), n_snapshots)
    eval_norms = eval_emb.item_norms()
    items = pd.concat(
        [
            feature_tables.item_rows_as_of(
                split.train, data.items, eval_norms, int(g), pd.Timestamp(int(g), unit="s", tz="UTC")
            )
            for g in grid
        ]
        + [feature_tables.item_rows_as_of(ratings, data.items, final_emb.item_norms(), data_end, stamp)],
        ignore_index=True,
    )
    data_dir = repo / "data"
    feature_tables.write_parquet_atomic(users, data_dir / "user_features.parquet")
    feature_tables.write_parquet_atomic(items, data_dir / "item_features.parquet")


def _with_features(store: FeatureStore, frame: pd.DataFrame) -> pd.DataFrame:
    feats = feast_ops.historical_features(store, frame)
    frame = frame.reset_index(drop=True)
    return pd.concat([frame, feats.drop(columns=["user_id", "item_id", "event_timestamp"])], axis=1)


def evaluate(
    split: TemporalSplit, eval_frame: pd.DataFrame, booster, n_candidates: int
) -> dict[str, dict[str, float]]:
    holdout = split.holdout[split.holdout["user_id"].isin(split.eval_users)]
    relevant = holdout.groupby("user_id")["item_id"].apply(set)
    users = relevant.index.to_numpy()
    seen = split.train[split.train["user_id"].isin(users)].groupby("user_id")["item_id"].apply(set)
    popular_order = split.train["item_id"].value_counts().index.to_numpy()
    depth = max(50, n_candidates)

    popular_lists = []
    for u in users:
        s = seen.get(u, set())
        popular_lists.append(np.array([i for i in popular_order[: depth + len(s)] if i not in s][:depth]))

    eval_frame = eval_frame.assign(ranker_score=score(booster, matrix_from_frame(eval_frame)))
    by_user = dict(tuple(eval_frame.groupby("user_id")))
    empty = np.empty(0, np.int64)
    retrieval_lists, ranked_lists = [], []
    for u in users:
        part = by_user.get(u)
        if part is None:
            retrieval_lists.append(empty)
            ranked_lists.append(empty)
            continue
        retrieval_lists.append(part.sort_values("retrieval_rank")["item_id"].to_numpy())
        ranked_lists.append(
            part.sort_values("ranker_score", ascending=False, kind="stable")["item_id"].to_numpy()
        )
    rel = [relevant[u] for u in users]
    return {
        "most_popular": evaluate_lists(popular_lists, rel),
        "retrieval_only": evaluate_lists(retrieval_lists, rel),
        "two_stage": evaluate_lists(ranked_lists, rel),
    }


def _history(ratings: pd.DataFrame, emb: Embeddings) -> History:
    ordered = ratings.sort_values(["user_id", "ts"], kind="stable")
    user_ids, counts = np.unique(ordered["user_id"].to_numpy(), return_counts=True)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return History(user_ids.astype(np.int64), indptr, emb.item_rows(ordered["item_id"].to_numpy()))


def build(
    data: Interactions, cfg: BuildConfig, repo: Path, artifacts: Path, progress: bool = True
) -> tuple[Path, dict]:
    """Run the whole offline path; returns the published bundle's path and its evaluation."""
    timer = Timer(log=progress)
    stamp = pd.Timestamp(datetime.now(UTC).replace(microsecond=0))
    with timer.step("split"):
        split = temporal_split(
            data.ratings, cfg.holdout_fraction, cfg.min_user_interactions, cfg.max_users_per_group, cfg.seed
        )
    with timer.step("embeddings (evaluation model)"):
        eval_emb = _als(split.train, cfg, progress)
    with timer.step("embeddings (serving model)"):
        final_emb = _als(data.ratings, cfg, progress)
    with timer.step("index"):
        eval_index, _ = build_index(eval_emb.item_factors, cfg.index, cfg.seed)
        index, index_params = build_index(final_emb.item_factors, cfg.index, cfg.seed)
    n_snapshots = cfg.item_snapshots or _default_snapshots(len(final_emb.item_ids))
    with timer.step("feature sources"):
        write_feature_sources(data, split, eval_emb, final_emb, repo, stamp, n_snapshots)
    with timer.step("feast apply"):
        feast_ops.apply(repo)
    with timer.step("feast materialize-incremental"):
        feast_ops.materialize_incremental(repo)
    store = FeatureStore(repo_path=str(repo))
    feast_ops.check_feature_service(store)

    def labelled(users: np.ndarray) -> pd.DataFrame:
        """Retrieved candidates for `users`, labelled, with their point-in-time features."""
        frame = candidate_frame(
            eval_index, eval_emb, split.train, split.holdout, users, cfg.n_candidates, split.cutoff
        )
        return _with_features(store, frame)

    with timer.step("ranker training set (get_historical_features)"):
        train_frame = labelled(split.ranker_users)
    with timer.step("ranker"):
        booster, ranker_info = train_ranker(train_frame, cfg.ranker, cfg.seed)
    with timer.step("evaluation"):
        eval_frame = labelled(split.eval_users)
        methods = evaluate(split, eval_frame, booster, cfg.n_candidates)
        queries = final_emb.user_factors[final_emb.user_rows(split.eval_users[:1_000])]
        recall = index_recall(index, final_emb.item_factors, queries, cfg.n_candidates)

    with timer.step("bundle"):
        final_items = (
            feature_tables.item_rows_as_of(
                data.ratings, data.items, final_emb.item_norms(), int(data.ratings["ts"].max()) + 1, stamp
            )
            .set_index("item_id")
            .reindex(final_emb.item_ids)
        )
        columns = {name: final_items[name].to_numpy(np.float64) for name in ITEM_FEATURES}
        popular_rows = np.lexsort((-columns["item_popularity"], -columns["item_popularity_recent"]))[
            : cfg.n_popular
        ]
        version = f"{stamp:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
        evaluation = {
            "methods": methods,
            "n_eval_users": len(split.eval_users),
            "holdout_fraction": cfg.holdout_fraction,
            "index": {
                **index_params,
                "n": cfg.n_candidates,
                "recall_vs_exact": recall,
                "n_queries": len(queries),
            },
            "timings_s": timer.seconds,
        }
        manifest = {
            "version": version,
            "created_at": stamp.isoformat(),
            "data_source": {
                "path": data.source,
                "n_interactions": len(data.ratings),
                "n_users": int(data.ratings["user_id"].nunique()),
                "n_items": len(data.items),
                "skipped_rows": len(data.skipped),
            },
            "embedding_dim": int(final_emb.item_factors.shape[1]),
            "index": index_params,
            "ranker": ranker_info,
            "feature_service": feast_ops.FEATURE_SERVICE,
            "build_config": cfg.model_dump(),
            "evaluation": evaluation,
        }
        staging = artifacts / f".staging-{version}-{time.monotonic_ns()}"
        try:
            bundle_mod.write_bundle(
                staging,
                index=index,
                ranker=booster,
                item_ids=final_emb.item_ids,
                item_columns=columns,
                popular_rows=popular_rows,
                history=_history(data.ratings, final_emb),
                manifest=manifest,
            )
            bundle_mod.load_bundle(staging)  # never publish what the server would refuse
            path = bundle_mod.publish(staging, artifacts)
        finally:
            bundle_mod.discard(staging)
    if progress:
        print(format_table(evaluation), flush=True)
    return path, evaluation
