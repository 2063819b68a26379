"""A replica's serving state: user_config laid over the app args, partial bundles, refusals (no Ray)."""

from __future__ import annotations

import pytest

from serve_app.bundle import load_bundle
from serve_app.config import SERVING_DEFAULTS
from serve_app.errors import BundleError, ConfigError
from serve_app.serving_state import ServingState
from tests.conftest import new_version_of

pytestmark = pytest.mark.slow  # they share the session's real build (`built`)


def most_popular(built, n: int) -> list[int]:
    bundle = load_bundle(built.bundle, parts=())
    return bundle.items.item_ids[bundle.popular_rows[:n]].tolist()


def blocked_rows(state: ServingState) -> list[int]:
    return next(f for f in state.current.filters if f.name == "blocked_items").blocked_rows.tolist()


@pytest.fixture
def state(built) -> ServingState:
    """Deployed with a business rule (the two most popular items) and a non-default deadline."""
    base = SERVING_DEFAULTS.with_overrides(
        {"bundle": str(built.bundle), "blocked_item_ids": most_popular(built, 2), "request_timeout_s": 0.5}
    )
    state = ServingState(base, parts=("history",))
    state.reconfigure({})
    return state


def test_a_rollout_naming_only_the_bundle_keeps_the_business_rules(state, built, tmp_path):
    before = state.current
    settings = state.reconfigure({"bundle": str(new_version_of(built.bundle, tmp_path / "b", "v-next"))})
    assert state.current.bundle.version == "v-next"
    assert list(settings.blocked_item_ids) == most_popular(built, 2) and settings.request_timeout_s == 0.5
    assert len(blocked_rows(state)) == 2
    # Overrides are laid over the app args, not over the last reconfigure: every replica, old or new,
    # computes the same settings from the same deploy.
    assert state.reconfigure({"n_candidates": 50}).bundle == str(built.bundle)
    assert state.current.bundle.version == before.bundle.version


def test_a_replica_loads_only_the_parts_it_serves(state):
    bundle = state.current.bundle
    assert len(bundle.popular_rows) and len(bundle.history.user_ids)
    with pytest.raises(BundleError, match="without its index"):
        bundle.index  # noqa: B018
    with pytest.raises(BundleError, match="without its ranker"):
        bundle.ranker  # noqa: B018


def test_bad_user_config_and_bad_bundle_are_refused_while_serving(state, built, tmp_path):
    version = state.current.bundle.version
    state.reconfigure({"bundel": "typo"})
    assert state.current.bundle.version == version and "bundel" in state.refused["error"]
    corrupt = new_version_of(built.bundle, tmp_path / "c", "v-corrupt")
    (corrupt / "index.faiss").write_bytes(b"garbage")
    state.reconfigure({"bundle": str(corrupt)})
    assert state.current.bundle.version == version and "index.faiss" in state.refused["error"]
    state.reconfigure({})
    assert state.refused is None


def test_with_nothing_to_fall_back_to_a_refusal_fails_the_deploy(built):
    with pytest.raises(ConfigError, match="Extra inputs"):
        ServingState(SERVING_DEFAULTS.with_overrides({"bundle": str(built.bundle)})).reconfigure({"x": 1})
