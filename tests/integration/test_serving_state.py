"""A replica's serving state: user_config laid over the app args, partial bundles, refusals (no Ray)."""

from __future__ import annotations

import pytest

from serve_app.core.bundle import load_bundle
from serve_app.core.errors import BundleError, ConfigError
from serve_app.core.settings import SERVING_DEFAULTS
from serve_app.request.serving_state import ServingState
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


def test_a_canary_holds_both_bundles_and_splits_users_by_their_hash(built, tmp_path):
    from serve_app.request.canary import Split

    canary_dir = new_version_of(built.bundle, tmp_path / "c", "v-canary")
    state = ServingState(SERVING_DEFAULTS.with_overrides({"bundle": str(built.bundle)}), parts=("history",))
    state.reconfigure({})
    main = state.current
    state.reconfigure({"canary_bundle": str(canary_dir), "canary_share": 0.3})
    assert state.current.bundle is main.bundle  # the main arm is not loaded again
    canary = state.canary
    assert canary is not None and canary.bundle.version == "v-canary"
    users = list(range(1, 401))
    arms = [state.for_user(u).bundle.version for u in users]
    split = Split(0.3, "v-canary")
    assert arms == ["v-canary" if split.arm(u) == "canary" else main.bundle.version for u in users]
    assert 0.2 < arms.count("v-canary") / len(users) < 0.4
    assert state.for_version("v-canary") is canary and state.for_version("v-other") is None
    assert state.arm_of("v-canary") == "canary" and state.arm_of(main.bundle.version) == "main"

    # A bad canary is refused and both arms stay as they were.
    state.reconfigure({"canary_bundle": str(tmp_path / "missing"), "canary_share": 0.3})
    assert state.canary is canary and "missing" in state.refused["path"]

    # Promote: the canary's loaded bundle becomes the main one, nothing is loaded again.
    state.reconfigure({"bundle": str(canary_dir)})
    assert state.current.bundle is canary.bundle and state.canary is None
    assert state.for_user(users[0]).bundle.version == "v-canary"


def test_a_rollback_keeps_the_very_main_bundle_and_the_event_writer_ignores_canaries(built, tmp_path):
    canary_dir = new_version_of(built.bundle, tmp_path / "c", "v-canary")
    state = ServingState(SERVING_DEFAULTS.with_overrides({"bundle": str(built.bundle)}), parts=("history",))
    state.reconfigure({})
    main = state.current.bundle
    state.reconfigure({"canary_bundle": str(canary_dir), "canary_share": 0.5})
    state.reconfigure({})
    assert state.canary is None and state.current.bundle is main
    writer = ServingState(SERVING_DEFAULTS.with_overrides({"bundle": str(built.bundle)}), ("history",), False)
    writer.reconfigure({"canary_bundle": str(canary_dir), "canary_share": 0.5})
    assert writer.canary is None and writer.refused is None


def test_a_ranker_keeps_the_bundles_of_its_last_steps_and_other_stages_do_not(built, tmp_path):
    """Between two steps a Ranker may get candidates of the bundle it just left: it still ranks them
    with that bundle (kept: model and item features), a Retriever keeps no index it left."""
    b = new_version_of(built.bundle, tmp_path / "b", "v-b")
    for keep in (True, False):
        state = ServingState(
            SERVING_DEFAULTS.with_overrides({"bundle": str(built.bundle)}), ("history",), keep_retired=keep
        )
        state.reconfigure({})
        first = state.current.bundle.version
        state.reconfigure({"bundle": str(b)})
        assert state.current.bundle.version == "v-b"
        assert (state.for_version(first) is not None) is keep
        assert state.for_version("v-b") is state.current
