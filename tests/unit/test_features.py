"""model_matrix, the one transformation shared by training (per-row arrays) and serving (one user)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from serve_app.core.features import (
    FEATURE_NAMES,
    ITEM_FEATURES,
    RECENT_ITEMS,
    USER_FEATURES,
    model_matrix,
    retrieval_columns,
)

SHARES = np.array([0.5, 0.25, 0.125, 0.125], dtype=np.float32)
USER: dict[str, Any] = {
    "user_n_interactions": 12,
    "user_days_since_last": 3.5,
    "user_avg_rating": 3.75,
    "user_n_recent": 4,
    "user_category_share": SHARES,
}
ITEMS: dict[str, np.ndarray] = {
    "item_popularity": np.array([10.0, 0.0, 250.0, 3.0, 7.0]),
    "item_popularity_recent": np.array([1.0, 0.0, 40.0, np.nan, 2.0]),
    "item_popularity_year": np.array([5.0, 0.0, 90.0, 2.0, 6.0]),
    "item_age_days": np.array([5.0, 1.0, 300.0, 20.0, 2.5]),
    "item_days_since_last": np.array([0.5, 1.0, 2.0, np.nan, 0.0]),
    "item_avg_rating": np.array([4.0, 2.5, 3.0, 5.0, np.nan]),
    "item_category": np.array([0.0, 2.0, -1.0, 7.0, np.nan]),
}
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5], dtype=np.float32)
CANDIDATES = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]], np.float32)
RECENT = np.array([[0.0, 2.0], [3.0, 0.0]], np.float32)  # oldest first: the latest is along x
NO_VECTORS = np.empty((0, 2), np.float32)
RETRIEVAL = retrieval_columns(SCORES, CANDIDATES, RECENT)
N = len(SCORES)


def col(matrix: np.ndarray, name: str) -> np.ndarray:
    return matrix[:, FEATURE_NAMES.index(name)]


def per_row(user: dict[str, Any], n: int = N) -> dict[str, Any]:
    rows: dict[str, Any] = {k: np.full(n, v) for k, v in user.items() if k != "user_category_share"}
    shares = np.empty(n, dtype=object)
    for i in range(n):
        shares[i] = user["user_category_share"].copy()
    rows["user_category_share"] = shares
    return rows


def test_one_column_per_feature_name_as_float32() -> None:
    matrix = model_matrix(USER, ITEMS, RETRIEVAL)
    assert matrix.shape == (N, len(FEATURE_NAMES))
    assert matrix.dtype == np.float32
    assert len(USER_FEATURES) == 5 and len(ITEM_FEATURES) == 7


def test_serving_scalars_and_training_rows_give_the_same_matrix() -> None:
    serving = model_matrix(USER, ITEMS, RETRIEVAL)
    training = model_matrix(per_row(USER), ITEMS, RETRIEVAL)
    np.testing.assert_array_equal(serving, training)


def test_training_frame_columns_give_the_same_matrix() -> None:
    # The shape training really sees: columns of a pandas frame, the share column holding arrays.
    frame = pd.DataFrame(per_row(USER))
    user = {name: frame[name].to_numpy() for name in USER_FEATURES}
    np.testing.assert_array_equal(model_matrix(user, ITEMS, RETRIEVAL), model_matrix(USER, ITEMS, RETRIEVAL))


def test_columns_hold_the_documented_transformations() -> None:
    m = model_matrix(USER, ITEMS, RETRIEVAL)
    np.testing.assert_array_equal(col(m, "retrieval_rank"), np.arange(N, dtype=np.float32))
    np.testing.assert_allclose(col(m, "retrieval_score_ratio"), SCORES / SCORES[0], rtol=1e-6)
    np.testing.assert_array_equal(col(m, "user_log_interactions"), np.float32(np.log1p(12)))
    np.testing.assert_array_equal(col(m, "user_log_recent"), np.float32(np.log1p(4)))
    np.testing.assert_array_equal(
        col(m, "item_log_popularity"), np.log1p(ITEMS["item_popularity"]).astype(np.float32)
    )
    np.testing.assert_array_equal(col(m, "item_category"), ITEMS["item_category"].astype(np.float32))
    np.testing.assert_array_equal(col(m, "rating_gap"), (ITEMS["item_avg_rating"] - 3.75).astype(np.float32))


def test_user_item_category_share_picks_the_items_category() -> None:
    m = model_matrix(USER, ITEMS, RETRIEVAL)
    # categories 0, 2 -> their shares; -1 (none), 7 (beyond the vector) and NaN -> unknown
    np.testing.assert_array_equal(col(m, "user_item_category_share"), [0.5, 0.125, np.nan, np.nan, np.nan])


def test_category_share_is_nan_without_shares() -> None:
    m = model_matrix({**USER, "user_category_share": None}, ITEMS, RETRIEVAL)
    assert np.isnan(col(m, "user_item_category_share")).all()
    rows = per_row(USER)
    rows["user_category_share"][1] = None  # a training row whose user had no features yet
    rows["user_category_share"][3] = np.nan
    share = col(model_matrix(rows, ITEMS, RETRIEVAL), "user_item_category_share")
    np.testing.assert_array_equal(share, [0.5, np.nan, np.nan, np.nan, np.nan])


@pytest.mark.parametrize("length", [4, N])
def test_category_share_as_a_list_is_one_users_vector(length: int) -> None:
    # A Python list is what Feast's get_online_features().to_dict() gives the serving path; its
    # length may even equal the candidate count and it must still be read as one user's vector.
    shares = [0.5, 0.25, 0.125, 0.125, 0.0][:length]
    m = model_matrix({**USER, "user_category_share": shares}, ITEMS, RETRIEVAL)
    np.testing.assert_array_equal(col(m, "user_item_category_share"), [0.5, 0.125, np.nan, np.nan, np.nan])


@pytest.mark.parametrize("missing", [None, np.nan, np.float32("nan")], ids=["None", "nan", "float32-nan"])
def test_missing_user_scalar_becomes_nan(missing: Any) -> None:
    m = model_matrix({**USER, "user_avg_rating": missing}, ITEMS, RETRIEVAL)
    assert np.isnan(col(m, "user_avg_rating")).all()
    assert np.isnan(col(m, "rating_gap")).all()


def test_pandas_na_user_scalar_becomes_nan() -> None:
    m = model_matrix({**USER, "user_avg_rating": pd.NA}, ITEMS, RETRIEVAL)
    assert np.isnan(col(m, "user_avg_rating")).all()


def test_missing_key_becomes_nan() -> None:
    user = {k: v for k, v in USER.items() if k != "user_days_since_last"}
    m = model_matrix(user, {k: v for k, v in ITEMS.items() if k != "item_age_days"}, RETRIEVAL)
    assert np.isnan(col(m, "user_days_since_last")).all()
    assert np.isnan(col(m, "item_age_days")).all()


def test_none_na_and_nan_in_per_row_columns_become_nan() -> None:
    rows = per_row(USER)
    rows["user_n_interactions"] = np.array([3, None, pd.NA, np.nan, 7], dtype=object)
    rows["user_n_recent"] = pd.array([1, None, 2, None, 0], dtype="Int64").to_numpy()  # nullable Feast ints
    m = model_matrix(rows, ITEMS, RETRIEVAL)
    np.testing.assert_array_equal(
        col(m, "user_log_interactions"), np.log1p([3, np.nan, np.nan, np.nan, 7]).astype(np.float32)
    )
    np.testing.assert_array_equal(
        col(m, "user_log_recent"), np.log1p([1, np.nan, 2, np.nan, 0]).astype(np.float32)
    )


@pytest.mark.parametrize(
    ("user", "items"),
    [
        ({**USER, "user_avg_rating": np.ones(N + 1)}, ITEMS),
        (USER, {**ITEMS, "item_age_days": np.ones(N - 1)}),
        (USER, {**ITEMS, "item_popularity": np.ones((N, 2))}),
    ],
    ids=["user-column-too-long", "item-column-too-short", "item-column-2d"],
)
def test_wrong_length_column_raises(user: dict[str, Any], items: dict[str, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="shape"):
        model_matrix(user, items, RETRIEVAL)


def test_wrong_number_of_per_row_share_vectors_raises() -> None:
    rows = per_row(USER, n=N + 2)
    rows = {**per_row(USER), "user_category_share": rows["user_category_share"]}
    with pytest.raises(ValueError, match="user_category_share has 7 rows, expected 5"):
        model_matrix(rows, ITEMS, RETRIEVAL)


def test_single_per_row_share_vector_for_many_candidates_raises_value_error() -> None:
    one_row = np.empty(1, dtype=object)
    one_row[0] = SHARES
    with pytest.raises(ValueError, match="user_category_share has 1 rows, expected 5"):
        model_matrix({**per_row(USER), "user_category_share": one_row}, ITEMS, RETRIEVAL)


def test_retrieval_columns_do_not_depend_on_the_models_score_scale() -> None:
    # Two models that order the same candidates alike but score on different scales give one input.
    # Likewise item vectors scaled by a model: cosine similarities do not move.
    a = retrieval_columns(SCORES, CANDIDATES, RECENT)
    b = retrieval_columns(SCORES * 3.7, CANDIDATES * 5.0, RECENT * 0.2)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6)


def test_history_similarities_are_the_best_and_the_latest_cosine() -> None:
    r = 1 / np.sqrt(2)
    np.testing.assert_allclose(RETRIEVAL["history_sim_max"], [1.0, 1.0, r, 0.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(RETRIEVAL["history_sim_last"], [1.0, 0.0, r, -1.0, 0.0], atol=1e-7)
    # Only the RECENT_ITEMS latest count: an older perfect match is forgotten.
    old_match = np.vstack([CANDIDATES[3:4], np.tile(RECENT[-1], (RECENT_ITEMS, 1))])
    assert retrieval_columns(SCORES, CANDIDATES, old_match)["history_sim_max"][3] == -1.0


def test_retrieval_ratio_and_similarities_are_missing_without_a_scale_or_a_history() -> None:
    cols = retrieval_columns(np.array([0.0, -0.5], np.float32), CANDIDATES[:2], NO_VECTORS)
    assert np.isnan(cols["retrieval_score_ratio"]).all()
    assert np.isnan(cols["history_sim_max"]).all() and np.isnan(cols["history_sim_last"]).all()
    empty = retrieval_columns(np.empty(0, np.float32), NO_VECTORS, RECENT)
    assert all(v.shape == (0,) for v in empty.values())
