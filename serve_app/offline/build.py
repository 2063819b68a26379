"""`recsys build`: data -> strict evaluation -> feast apply/materialize -> served model -> bundle.

The evaluation (offline/protocol.py) trains snapshot models on data before each decision time and
rankers on their candidates; the bundle serves the model trained on everything, with the ranker of
`cfg.seed` from the evaluation (its inputs do not depend on which ALS model retrieved, see
serve_app/core/features.py), the served model's user factors, and the model's id on every vector.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from feast import FeatureStore

from serve_app.core import bundle as bundle_mod
from serve_app.core.artifacts import History, UserVectors
from serve_app.core.feature_rows import n_categories_of
from serve_app.core.features import ITEM_FEATURES
from serve_app.events.log import event_log_path
from serve_app.offline import feast_ops
from serve_app.offline.config import BuildConfig
from serve_app.offline.data import Interactions
from serve_app.offline.embeddings import Embeddings, fold_in_users, train_als, user_logs
from serve_app.offline.evaluation import protocol
from serve_app.offline.evaluation.metrics import format_table
from serve_app.offline.evaluation.snapshots import default_snapshots
from serve_app.offline.evaluation.split import Group, TemporalSplit, temporal_split
from serve_app.offline.index import build_index, index_recall
from serve_app.offline.logged_events import with_logged_events
from serve_app.offline.sources import (
    served_item_rows,
    serving_stamp,
    training_features,
    write_feature_sources,
)
from serve_app.request.stages.filters import FilterContext, SeenFilter
from serve_app.request.stages.retrieve import candidate_features, retrieve


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


def ranker_input_shift(
    runs: list[protocol.SeedRun], split: TemporalSplit, served: Embeddings, index, n: int
) -> dict:
    """Medians of the retrieval inputs on the test users: from the evaluation's snapshot models, and
    from the served model. Raw scores move between models; the ranker reads only the invariant ones."""
    users = split.test_users[np.isin(split.test_users, served.user_ids)][:1_000]
    seen = split.ratings[split.ratings["user_id"].isin(users)].groupby("user_id")["item_id"].apply(np.asarray)
    contexts = [
        FilterContext(int(u), served.item_rows(seen.get(u, np.empty(0, np.int64))), np.empty(0, np.int64))
        for u in users
    ]
    found = retrieve(index, served.user_factors[served.user_rows(users)], n, [SeenFilter()], contexts)
    columns = [
        candidate_features(index, c, ctx.seen_rows) for (c, _), ctx in zip(found, contexts, strict=True)
    ]
    ev = runs[0].frame[runs[0].frame["user_id"].isin(split.test_users)]

    def medians(name: str, served_values: list[np.ndarray]) -> dict:
        both = np.concatenate(served_values) if served_values else np.empty(0)
        return {
            "evaluation_models": float(np.nanmedian(ev[name])) if len(ev) else None,
            "served_model": float(np.nanmedian(both)) if len(both) else None,
        }

    shift = {"median_retrieval_score": medians("retrieval_score", [c.scores for c, _ in found])}
    for name in ("retrieval_score_ratio", "history_sim_max", "history_sim_last"):
        shift[f"median_{name} (ranker input)"] = medians(name, [c[name] for c in columns])
    return shift


def history_of(ratings: pd.DataFrame, emb: Embeddings) -> History:
    ordered, user_ids, indptr = user_logs(ratings)
    return History(
        user_ids.astype(np.int64),
        indptr,
        emb.item_rows(ordered["item_id"].to_numpy()),
        ordered["rating"].to_numpy(np.float32),
        ordered["ts"].to_numpy(np.int64),
    )


@dataclass(frozen=True)
class Evaluated:
    split: TemporalSplit
    runs: list[protocol.SeedRun]
    evaluation: dict
    boosters: dict
    ranker_info: dict
    n_snapshots: int


def evaluate_on(
    data: Interactions,
    cfg: BuildConfig,
    repo: Path,
    group: Group,
    timer: Timer,
    progress: bool,
    served: Embeddings | None = None,
    stamp: pd.Timestamp | None = None,
) -> Evaluated:
    """The strict protocol through Feast, reported on `group`; with `served`, the serving rows are
    written and materialized in the same pass (a build), else only the training rows (`recsys tune`)."""
    with timer.step("split"):
        split = temporal_split(
            data.ratings,
            cfg.protocol,
            cfg.holdout_fraction,
            cfg.min_user_interactions,
            cfg.max_users_per_group,
            cfg.valid_fraction,
            cfg.seed,
        )
    n_snapshots = cfg.eval_snapshots or default_snapshots(split)
    with timer.step(f"strict retrieval ({n_snapshots} snapshot models x {cfg.eval_seeds} seeds)"):
        runs = protocol.retrieve_all(split, cfg, n_snapshots, progress)
    with timer.step("feature sources"):
        write_feature_sources(data, split, runs, repo, served, stamp)
    with timer.step("feast apply"):
        feast_ops.apply(repo)
    if served is not None and stamp is not None:
        with timer.step("feast materialize-incremental"):
            feast_ops.materialize_incremental(repo, (stamp + timedelta(seconds=1)).to_pydatetime())
    store = FeatureStore(repo_path=str(repo))
    feast_ops.check_feature_service(store)
    with timer.step("point-in-time features (get_historical_features)"):
        runs = protocol.with_features(runs, lambda frame: training_features(store, data, frame))
    with timer.step("rankers and evaluation"):
        evaluation, boosters, infos = protocol.evaluate(split, runs, cfg, group, len(data.items))
    return Evaluated(split, runs, evaluation, boosters, infos, n_snapshots)


def build(
    data: Interactions, cfg: BuildConfig, repo: Path, artifacts: Path, progress: bool = True
) -> tuple[Path, dict]:
    """Run the whole offline path; returns the published bundle's path and its evaluation. The events
    the service accepted (the repo's event log) join the interaction log first."""
    timer = Timer(log=progress)
    data, events = with_logged_events(data, event_log_path(repo))
    stamp = serving_stamp(repo, int(data.ratings["ts"].max()) + 1)
    with timer.step("embeddings (served model, all data)"):
        served = fold_in_users(
            train_als(data.ratings, cfg.embedding, cfg.seed, progress), data.ratings, cfg.embedding
        )
    with timer.step("index"):
        index, index_params = build_index(
            served.item_factors, cfg.index, cfg.seed, served.user_factors, cfg.n_candidates
        )
    done = evaluate_on(data, cfg, repo, "test", timer, progress, served, stamp)
    split, evaluation, n_snapshots = done.split, done.evaluation, done.n_snapshots
    test_users = split.test_users[np.isin(split.test_users, served.user_ids)][:1_000]
    queries = served.user_factors[served.user_rows(test_users)]
    recall = index_recall(index, served.item_factors, queries, cfg.n_candidates)
    shift = ranker_input_shift(done.runs, split, served, index, cfg.n_candidates)
    infos = done.ranker_info
    data_end = int(data.ratings["ts"].max()) + 1
    booster = done.boosters[cfg.seed]

    with timer.step("bundle"):
        final_items = served_item_rows(data, served.item_ids).set_index("item_id").reindex(served.item_ids)
        columns = {name: final_items[name].to_numpy(np.float64) for name in ITEM_FEATURES}
        popular_rows = np.lexsort((-columns["item_popularity"], -columns["item_popularity_recent"]))[
            : cfg.n_popular
        ]
        version = f"{stamp:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
        evaluation.update(
            {
                "decision_time": "each user's first held-out interaction"
                if split.protocol == "per_user"
                else "one global time for all users",
                "holdout_fraction": cfg.holdout_fraction,
                "snapshot_models": n_snapshots,
                "published_seed": cfg.seed,
                "split_users": {g: len(split.group(g)) for g in ("ranker", "valid", "test")},
                "ranker_input_shift": shift,
                "index": {
                    **index_params,
                    "n": cfg.n_candidates,
                    "recall_vs_exact": recall,
                    "n_queries": len(queries),
                },
                "timings_s": timer.seconds,
            }
        )
        manifest = {
            "version": version,
            "created_at": stamp.isoformat(),
            "data_source": {
                "path": data.source,
                "n_interactions": len(data.ratings),
                "n_users": int(data.ratings["user_id"].nunique()),
                "n_items": len(data.items),
                "skipped_rows": len(data.skipped),
                **events,
                "data_end": pd.Timestamp(data_end, unit="s", tz="UTC").isoformat(),
            },
            "model": {
                "kind": "implicit-als",
                "factors": cfg.embedding.factors,
                "trained_on": "every interaction in data_source",
                "n_users": len(served.user_ids),
            },
            "embedding_dim": int(served.item_factors.shape[1]),
            # The length of user_category_share, for rows serving recomputes after events.
            "n_categories": n_categories_of(data.items),
            "index": index_params,
            "ranker": {**infos[cfg.seed], "seed": cfg.seed},
            "feature_service": feast_ops.FEATURE_SERVICE,
            "build_config": cfg.model_dump(),
            "evaluation": evaluation,
        }
        staging = artifacts / f".staging-{version}-{time.monotonic_ns()}"
        try:
            bundle_mod.write_bundle(
                staging,
                index=index,
                users=UserVectors(served.model_id, served.user_ids, served.user_factors),
                ranker=booster,
                item_ids=served.item_ids,
                item_columns=columns,
                popular_rows=popular_rows,
                history=history_of(data.ratings, served),
                manifest=manifest,
            )
            bundle_mod.load_bundle(staging)  # never publish what the server would refuse
            path = bundle_mod.publish(staging, artifacts)
        finally:
            bundle_mod.discard(staging)
    if progress:
        print(format_table(evaluation), flush=True)
    return path, evaluation
