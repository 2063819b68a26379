"""Scorer: join candidate item features from the in-memory snapshot, score with XGBoost, sort."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import xgboost as xgb

from serve_app.core.bundle import Bundle
from serve_app.core.features import model_matrix
from serve_app.request.stages.scored import EMPTY_SCORES, Scored
from serve_app.request.stages.user_features import UserFeatureResult


def score(booster: xgb.Booster, matrix: np.ndarray) -> np.ndarray:
    return np.asarray(booster.inplace_predict(matrix, validate_features=False), dtype=np.float32)


def rank_batch(bundle: Bundle, requests: Sequence[tuple[UserFeatureResult, Scored]]) -> list[Scored]:
    """Score every request's candidates with one XGBoost call on the stacked matrix."""
    start = time.perf_counter()
    matrices, spans = [], []
    for features, cands in requests:
        rows = bundle.items.rows_of(cands.item_ids)
        if len(rows) != len(cands.item_ids):  # candidates from another bundle version: keep known ones
            known = np.isin(cands.item_ids, bundle.items.item_ids)
            cands = replace(
                cands,
                item_ids=cands.item_ids[known],
                scores=cands.scores[known],
                features={k: v[known] for k, v in cands.features.items()},
            )
        # The retriever computed the retrieval inputs with its index's vectors (retrieve_batch).
        matrices.append(model_matrix(features.values, bundle.items.take(rows), cands.features))
        spans.append(cands)
    scores = score(bundle.ranker, np.vstack(matrices)) if matrices else EMPTY_SCORES
    out, offset = [], 0
    elapsed = (time.perf_counter() - start) * 1000
    for cands, m in zip(spans, matrices, strict=True):
        s = scores[offset : offset + len(m)]
        offset += len(m)
        order = np.argsort(-s, kind="stable")
        out.append(
            replace(
                cands,
                item_ids=cands.item_ids[order],
                scores=s[order],
                features={},
                bundle_version=bundle.version,
                timings_ms={**cands.timings_ms, "rank": elapsed},
            )
        )
    return out


def rank_candidates(bundle: Bundle, requests: Sequence[tuple[UserFeatureResult, Scored]]) -> list[Scored]:
    """rank_batch over the requests that have candidates. The rest (a retrieval fallback, nothing
    left after filtering) are handed back as they came: the ranker was called with the retriever's
    unawaited answer, so it is the first to see it."""
    out = [c for _, c in requests]
    todo = [i for i, (_, c) in enumerate(requests) if c.fallback is None and len(c.item_ids)]
    for i, ranked in zip(todo, rank_batch(bundle, [requests[i] for i in todo]), strict=True):
        out[i] = ranked
    return out
