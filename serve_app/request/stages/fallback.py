"""The one place that decides fallbacks and degraded reasons, and the popularity fallback itself.

A fallback names why the normal path (retrieve -> rank) could not produce the answer; `degraded` says
the answer was built from partial information. Reasons, and who decides each:
- `unknown_user`, `missing_embedding`, `user_features_unavailable`, `model_mismatch`: no vector of the
  bundle's own model for this user, neither in the online store nor in the bundle (`for_features`);
- `retriever_unavailable`, `ranker_unavailable`: a stage failed or missed the deadline (`after_*`);
- `brownout`: the ingress had more requests in flight than its brownout thresholds (request/brownout.py).
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from serve_app.request.stages.filters import apply_filters
from serve_app.request.stages.scored import Scored
from serve_app.request.stages.served import Served
from serve_app.request.stages.user_features import UserFeatureResult

UNKNOWN_USER = "unknown_user"
MISSING_EMBEDDING = "missing_embedding"
USER_FEATURES_UNAVAILABLE = "user_features_unavailable"
MODEL_MISMATCH = "model_mismatch"
RETRIEVER_UNAVAILABLE = "retriever_unavailable"
RANKER_UNAVAILABLE = "ranker_unavailable"
BROWNOUT = "brownout"
BUNDLE_CHANGED = "bundle_changed"  # the ranker holds no longer (or not yet) the bundle that retrieved


def for_features(features: UserFeatureResult, dim: int, model_id: str) -> str | None:
    """Why the online features hold no usable vector of model `model_id`, or None when they do.

    A vector of another model (a newer build, or an older one after a rollback) is never paired with
    this model's item vectors: the inner products of two models mean nothing together.
    """
    if not features.found:
        return USER_FEATURES_UNAVAILABLE if features.source == "none" else UNKNOWN_USER
    embedding = features.embedding
    if embedding is None:
        return MISSING_EMBEDDING
    if features.embedding_model != model_id:
        return MODEL_MISMATCH
    if embedding.shape != (dim,) or not np.isfinite(embedding).all():
        return MISSING_EMBEDDING
    return None


def no_vector(features: UserFeatureResult, bundle_version: str, model_id: str, reason: str) -> Scored:
    """Retrieval has no vector for the user: an empty result that `settle` fills with the popularity
    list. A model mismatch nothing could resolve is degraded: the user has a vector, of another model."""
    if reason == MODEL_MISMATCH:
        why = (
            f"the online store holds this user's vector of model {features.embedding_model}; the bundle "
            f"serves model {model_id} and has no vector for this user"
        )
        return Scored.empty(bundle_version, fallback=reason, degraded=True, reason=features.reason or why)
    return Scored.empty(bundle_version, fallback=reason, degraded=features.degraded, reason=features.reason)


def stage_failure(error: BaseException, deadline_s: float) -> str:
    """The degraded reason for a stage call that failed or missed the request deadline."""
    if isinstance(error, TimeoutError):
        return f"stages missed the {deadline_s:.3g}s deadline"
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[-1] if text else ''}"[:300]


def after_retriever_failure(bundle_version: str, reason: str) -> Scored:
    """No candidates: the popularity list will stand in (see `settle`)."""
    return Scored.empty(bundle_version, fallback=RETRIEVER_UNAVAILABLE, degraded=True, reason=reason)


def after_ranker_failure(retrieved: Scored, reason: str, why: str = RANKER_UNAVAILABLE) -> Scored:
    """Candidates in retrieval order (the ranker failed, or was skipped: `why`); a retrieval result
    that was already a fallback stays one."""
    if retrieved.fallback is not None:
        return retrieved
    return replace(retrieved, fallback=why, degraded=True, reason=reason)


def unranked(candidates: Scored, ranker_version: str) -> Scored:
    """Candidates the ranker holds no bundle for (a rollout step between retrieval and ranking): in
    retrieval order, degraded, never scored by another model's ranker."""
    reason = f"candidates of bundle {candidates.bundle_version}; the ranker holds {ranker_version}"
    return after_ranker_failure(candidates, reason, BUNDLE_CHANGED)


def popular(served: Served, user_id: int, k: int, exclude_item_ids: tuple[int, ...], reason: str) -> Scored:
    """The popularity fallback, with the same filters as the normal path."""
    start = time.perf_counter()
    bundle = served.bundle
    rows = bundle.popular_rows
    keep, report = apply_filters(served.filters, rows, served.context(user_id, exclude_item_ids))
    rows = rows[keep][:k]
    scores = bundle.items.columns["item_popularity_recent"][rows].astype(np.float32)
    elapsed = (time.perf_counter() - start) * 1000
    return Scored(bundle.items.item_ids[rows], scores, bundle.version, report, reason, {"fallback": elapsed})


def settle(result: Scored, served: Served, user_id: int, k: int, exclude_item_ids: tuple[int, ...]) -> Scored:
    """A result without items because of a fallback becomes the popularity list, keeping why."""
    if len(result.item_ids) or result.fallback is None:
        return result
    pop = popular(served, user_id, k, exclude_item_ids, result.fallback)
    return replace(
        pop,
        degraded=result.degraded,
        reason=result.reason,
        timings_ms={**result.timings_ms, **pop.timings_ms},
    )
