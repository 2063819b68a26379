"""ALS fold-in: a user's vector from their interactions against fixed item factors (pure numpy).

The same least-squares step implicit's ALS takes for a user during training (and in its
`recalculate_user`), so a folded-in vector belongs to the model whose item factors it was solved
against. The offline evaluation uses it to give each held-out user a vector from exactly their
interactions before the decision time; serving can use it to refresh a vector after new events.
"""

from __future__ import annotations

import numpy as np


def interaction_weight(rating: np.ndarray) -> np.ndarray:
    """Confidence of one interaction before ALS's `alpha`: any interaction is a positive signal, a
    higher rating a stronger one; an unrated one (NaN: a view or a click event) is the plain positive
    signal, weight 1. The one definition, for training and fold-in alike."""
    return 1.0 + np.nan_to_num(np.asarray(rating, dtype=np.float32), nan=0.0) / 5.0


def confidence(rating: np.ndarray, later: np.ndarray, alpha: float, half_life: float | None) -> np.ndarray:
    """Confidence of interactions in fold-in: alpha·weight, halved for every `half_life` interactions
    the same user made after this one (`later`), so a vector leans to what the user does now.

    Recency matters on a per-user holdout: on ml-latest-small's validation users, half-life 10 took
    retrieval NDCG@10 from 0.100 to 0.106 (`recsys tune`). None: no decay.
    """
    c = alpha * interaction_weight(rating).astype(np.float64)
    if half_life:
        c = c * 0.5 ** (np.asarray(later, dtype=np.float64) / half_life)
    return c


def gram(item_factors: np.ndarray) -> np.ndarray:
    """YᵀY, computed once per model and shared by every fold-in against it."""
    y = np.asarray(item_factors, dtype=np.float64)
    return y.T @ y


def fold_in(
    item_factors: np.ndarray,
    yty: np.ndarray,
    rows: np.ndarray,
    confidence: np.ndarray,
    regularization: float,
) -> np.ndarray:
    """Solve (YᵀY + λI + Σᵢ (cᵢ - 1) yᵢyᵢᵀ) x = Σᵢ cᵢ yᵢ over the user's item rows (cᵢ = alpha·weight).

    Rows < 0 (items the model does not know) are ignored; a user with none gets the zero vector,
    which scores every item 0 (the caller decides whether that is usable).
    """
    rows = np.asarray(rows)
    keep = rows >= 0
    # Index, then cast: casting the whole factor matrix first copied 1M x 64 floats per user.
    y = np.asarray(item_factors)[rows[keep]].astype(np.float64)
    c = np.asarray(confidence, dtype=np.float64)[keep]
    dim = yty.shape[0]
    if len(c) == 0:
        return np.zeros(dim, dtype=np.float32)
    a = yty + regularization * np.eye(dim) + (y * (c - 1.0)[:, None]).T @ y
    b = (y * c[:, None]).sum(axis=0)
    return np.linalg.solve(a, b).astype(np.float32)


def fold_in_many(
    item_factors: np.ndarray,
    indptr: np.ndarray,
    rows: np.ndarray,
    confidence: np.ndarray,
    regularization: float,
) -> np.ndarray:
    """fold_in for many users at once: user u's interactions are rows[indptr[u]:indptr[u + 1]]."""
    yty = gram(item_factors)
    out = np.zeros((len(indptr) - 1, yty.shape[0]), dtype=np.float32)
    for u in range(len(indptr) - 1):
        span = slice(indptr[u], indptr[u + 1])
        out[u] = fold_in(item_factors, yty, rows[span], confidence[span], regularization)
    return out
