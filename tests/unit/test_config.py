"""BuildConfig and the serving settings: unknown keys are errors, HNSW must be able to return every
candidate, and a key that was removed is refused with what to do instead."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from serve_app.core.settings import AppArgs, ServingSettings
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


@pytest.mark.parametrize("key", ["admission", "admission_tolerance"])
def test_a_removed_key_is_refused_with_what_to_do(key: str, tmp_path) -> None:
    from harness.cluster import check_config
    from serve_app.core.errors import ConfigError

    with pytest.raises(ValidationError, match=f"`{key}` is no longer a setting.*Delete the key"):
        AppArgs.model_validate({key: "unlimited"})
    with pytest.raises(ValidationError, match="no longer a setting"):  # in a user_config too
        ServingSettings().with_overrides({key: 2.0})
    config = tmp_path / "old.yaml"
    config.write_text(f"applications:\n  - name: recsys\n    args: {{{key}: unlimited}}\n")
    with pytest.raises(ConfigError, match=f"old.yaml: application 'recsys': args: .*`{key}` is no longer"):
        check_config(config)  # what `make run` says before it starts anything
