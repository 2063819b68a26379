"""The strict evaluation: per seed, snapshot retrieval -> point-in-time features -> ranker -> lists.

Three methods are compared on the same users, each as the service would answer at the decision time:
`most_popular` (counts before the cutoff), `retrieval_only` (the snapshot model's top items) and
`two_stage` (those, reordered by the ranker). A user with no usable history at the cutoff gets the
popularity list from every method, as the service answers an unknown user. Every figure is the mean
over `cfg.eval_seeds` (ALS initialisation and ranker seeds); the ranker of `cfg.seed` is the one
published, so the evaluation scores the exact ranker that serves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xgboost as xgb

from serve_app.offline.config import BuildConfig
from serve_app.offline.evaluation import metrics as ev
from serve_app.offline.evaluation.popularity import popularity_at_cutoffs
from serve_app.offline.evaluation.snapshots import (
    UserQuery,
    candidates,
    snapshot_times,
    train_snapshots,
    user_queries,
)
from serve_app.offline.evaluation.split import Group, TemporalSplit
from serve_app.offline.training import matrix_from_frame, train_ranker
from serve_app.request.stages.rank import score

METHODS = ("most_popular", "retrieval_only", "two_stage")
FeatureFetch = Callable[[pd.DataFrame], pd.DataFrame]  # (user_id, item_id, event_timestamp) -> features


@dataclass(frozen=True)
class SeedRun:
    seed: int
    queries: dict[int, UserQuery]
    frame: pd.DataFrame  # candidates of every split user, labelled, with event_timestamp


def seeds_of(cfg: BuildConfig) -> list[int]:
    return [cfg.seed + i for i in range(cfg.eval_seeds)]


def retrieve_all(split: TemporalSplit, cfg: BuildConfig, n_snapshots: int, progress: bool) -> list[SeedRun]:
    """Snapshot models and labelled candidates for every split user, once per seed."""
    times = snapshot_times(split.cutoff.loc[split.users], n_snapshots)
    labels = split.holdout[["user_id", "item_id"]].drop_duplicates().assign(label=True)
    runs = []
    for seed in seeds_of(cfg):
        models = train_snapshots(split, times, cfg, seed, progress)
        queries = user_queries(split, models, split.users, cfg)
        frame = candidates(queries, cfg.n_candidates)
        frame = frame.merge(labels, on=["user_id", "item_id"], how="left")
        frame["label"] = frame["label"].eq(True)  # NaN (no match) -> False
        cut = split.cutoff.loc[frame["user_id"]].to_numpy()
        frame["event_timestamp"] = pd.to_datetime(cut - 1, unit="s", utc=True)
        runs.append(SeedRun(seed, {q.user_id: q for q in queries}, frame))
    return runs


def with_features(runs: list[SeedRun], fetch: FeatureFetch) -> list[SeedRun]:
    """One point-in-time feature read for the union of every seed's candidates, joined back."""
    keys = ["user_id", "item_id", "event_timestamp"]
    union = pd.concat([r.frame[keys] for r in runs]).drop_duplicates(ignore_index=True)
    feats = fetch(union).drop(columns="event_timestamp")
    return [
        SeedRun(
            r.seed, r.queries, r.frame.merge(feats, on=["user_id", "item_id"], how="left", validate="m:1")
        )
        for r in runs
    ]


def _ranked_lists(frame: pd.DataFrame, users: np.ndarray, booster: xgb.Booster) -> tuple[dict, dict]:
    part = frame[frame["user_id"].isin(users)]
    part = part.assign(ranker_score=score(booster, matrix_from_frame(part)) if len(part) else [])
    retrieval, ranked = {}, {}
    for u, rows in part.groupby("user_id"):
        retrieval[int(u)] = rows.sort_values("retrieval_rank")["item_id"].to_numpy()
        ranked[int(u)] = rows.sort_values("ranker_score", ascending=False, kind="stable")[
            "item_id"
        ].to_numpy()
    return retrieval, ranked


def evaluate(
    split: TemporalSplit, runs: list[SeedRun], cfg: BuildConfig, group: Group, n_catalogue: int
) -> tuple[dict, dict[int, xgb.Booster], dict]:
    """Train each seed's ranker on the ranker users and score the three methods on `group`.

    Returns the evaluation (means, intervals, exposure, per seed), the boosters by seed, ranker info.
    """
    users = split.group(group)
    relevant = split.holdout[split.holdout["user_id"].isin(users)].groupby("user_id")["item_id"].apply(set)
    users = relevant.index.to_numpy()
    boosters, infos, model_lists = {}, {}, []
    for run in runs:
        train = run.frame[run.frame["user_id"].isin(split.ranker_users)]
        boosters[run.seed], infos[run.seed] = train_ranker(train, cfg.ranker, run.seed)
        model_lists.append(_ranked_lists(run.frame, users, boosters[run.seed]))
    seen = split.history(users).groupby("user_id")["item_id"].apply(np.asarray).to_dict()
    describe = {int(u): [m[u][:10] for lists in model_lists for m in lists if u in m] for u in users}
    pop = popularity_at_cutoffs(split.ratings, split.cutoff.loc[users], seen, 50, describe)
    fallback_users = {int(u) for u in users if all(u not in lists[0] for lists in model_lists)}

    metrics: dict[str, list[dict[str, np.ndarray]]] = {m: [] for m in METHODS}
    exposure: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    rel = [relevant[u] for u in users]
    for retrieval, ranked in model_lists:
        for method, lists in (
            ("most_popular", pop.lists),
            ("retrieval_only", retrieval),
            ("two_stage", ranked),
        ):
            chosen = [lists.get(int(u), pop.lists[int(u)]) for u in users]
            metrics[method].append(ev.per_user(chosen, rel))
            pct = [pop.of(int(u), c[:10]) for u, c in zip(users, chosen, strict=True)]
            exposure[method].append(ev.exposure(chosen, pct, n_catalogue))
    return _summary(split, runs, users, metrics, exposure, len(fallback_users)), boosters, infos


def _summary(split, runs, users, metrics, exposure, n_fallback) -> dict:
    idx = ev.bootstrap_indices(len(users))
    means = {m: {k: np.mean([s[k] for s in metrics[m]], axis=0) for k in ev.ACCURACY} for m in METHODS}
    methods = {}
    for m in METHODS:
        methods[m] = {}
        for k in ev.ACCURACY:
            methods[m][k] = float(means[m][k].mean())
            methods[m][f"{k}_ci95"] = ev.interval(means[m][k], idx)
        for k in ev.EXPOSURE:
            methods[m][k] = float(np.mean([e[k] for e in exposure[m]]))
    two, ret, pop = (means[m]["ndcg@10"] for m in METHODS[::-1])
    diff = two - ret
    comparisons = {
        "two_stage - retrieval_only, ndcg@10": {"mean": float(diff.mean()), "ci95": ev.interval(diff, idx)},
        "two_stage / most_popular, ndcg@10": {
            "mean": float(two.mean() / max(pop.mean(), 1e-12)),
            "ci95": ev.ratio_interval(two, pop, idx),
        },
    }
    per_seed = {
        str(run.seed): {m: {k: float(metrics[m][i][k].mean()) for k in ev.ACCURACY} for m in METHODS}
        for i, run in enumerate(runs)
    }
    return {
        "protocol": split.protocol,
        "n_users": len(users),
        "seeds": [r.seed for r in runs],
        "methods": methods,
        "comparisons": comparisons,
        "per_seed": per_seed,
        "fallback_users": n_fallback,
    }
