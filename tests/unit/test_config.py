"""BuildConfig: unknown keys are errors, and HNSW must be able to return every candidate."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from serve_app.offline.config import BuildConfig, IndexConfig


def test_defaults_are_valid_and_round_trip_through_json() -> None:
    cfg = BuildConfig()
    again = BuildConfig.model_validate(json.loads(json.dumps(cfg.model_dump())))
    assert again == cfg


@pytest.mark.parametrize(
    "raw",
    [
        {"n_candidate": 100},  # typo of n_candidates
        {"index": {"kind": "flat", "nprobe": 4}},  # nested typo of ivf_nprobe
        {"embedding": {"factor": 32}},
        {"ranker": {"objective": "binary:logistic", "depth": 3}},
    ],
)
def test_unknown_keys_are_rejected(raw: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        BuildConfig.model_validate(raw)


def test_known_nested_overrides_are_applied() -> None:
    cfg = BuildConfig.model_validate({"n_candidates": 50, "index": {"kind": "ivf", "ivf_nprobe": 4}})
    assert cfg.n_candidates == 50
    assert (cfg.index.kind, cfg.index.ivf_nprobe) == ("ivf", 4)


def test_hnsw_ef_search_below_n_candidates_is_rejected() -> None:
    with pytest.raises(ValidationError, match="hnsw_ef_search must be >= n_candidates"):
        BuildConfig(n_candidates=300, index=IndexConfig(kind="hnsw", hnsw_ef_search=299))


def test_hnsw_ef_search_equal_to_n_candidates_is_accepted() -> None:
    cfg = BuildConfig(n_candidates=300, index=IndexConfig(kind="hnsw", hnsw_ef_search=300))
    assert cfg.index.hnsw_ef_search == 300


def test_small_ef_search_is_irrelevant_for_other_index_kinds() -> None:
    BuildConfig(n_candidates=300, index=IndexConfig(kind="ivf", hnsw_ef_search=64))


@pytest.mark.parametrize(
    "raw",
    [
        {"n_candidates": 5},
        {"holdout_fraction": 1.0},
        {"index": {"kind": "annoy"}},
        {"ranker": {"objective": "reg:squarederror"}},
    ],
)
def test_out_of_range_values_are_rejected(raw: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        BuildConfig.model_validate(raw)


def test_config_is_frozen() -> None:
    with pytest.raises(ValidationError):
        BuildConfig().n_candidates = 10  # type: ignore[misc]
