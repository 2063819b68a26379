"""Items that arrive after the build: folded in from their first events and served without a rebuild
(serve_app/core/item_delta.py), on the session's real build (no Ray)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pandas as pd
import pytest

from loadtest.new_items import closest_users
from serve_app.core.bundle import load_bundle
from serve_app.core.errors import BundleError
from serve_app.core.item_delta import extend, load_item_delta, write_item_delta
from serve_app.core.settings import SERVING_DEFAULTS
from serve_app.events.new_items import new_item_rows
from serve_app.request.flow import in_process_flow
from serve_app.request.serving_state import ServingState
from tests.conftest import new_version_of

pytestmark = pytest.mark.slow  # the session's real build (`built`)


@pytest.fixture(scope="module")
def delta(built, tmp_path_factory):
    bundle = load_bundle(built.bundle)
    target, fans = closest_users(bundle, 5, 5)
    new_id = int(bundle.items.item_ids.max()) + 1_000
    items = pd.DataFrame({"item_id": [new_id, new_id + 1], "title": ["New", "Nobody's"], "category": [0, 0]})
    now = int(time.time())
    events = pd.DataFrame(
        {
            "user_id": np.array(fans, np.int64),
            "item_id": np.int64(new_id),
            "rating": np.float32(5.0),
            "ts": now - np.arange(len(fans), dtype=np.int64),
        }
    )
    ids, factors, columns, skipped = new_item_rows(bundle, items, events, now + 1)
    assert ids.tolist() == [new_id] and any(f"item {new_id + 1}" in s for s in skipped)
    assert columns["item_popularity"].tolist() == [5.0]
    path = write_item_delta(tmp_path_factory.mktemp("deltas"), bundle, ids, factors, columns)
    return path, target, new_id, bundle


def _answer(built, settings, user_id: int, k: int = 100):
    flow, reader = in_process_flow(built.bundle, built.repo, settings)
    try:
        return asyncio.run(flow.run(user_id, k, ()))
    finally:
        reader.close()


def test_a_new_item_with_a_few_events_is_recommended_to_a_similar_user(built, delta):
    path, target, new_id, bundle = delta
    before = _answer(built, SERVING_DEFAULTS, target)
    assert new_id not in before.item_ids.tolist()
    after = _answer(built, SERVING_DEFAULTS.with_overrides({"item_delta": str(path)}), target)
    assert not after.degraded and after.fallback is None
    assert new_id in after.item_ids[:20].tolist(), after.item_ids[:20]
    assert after.bundle_version == f"{bundle.version}+{load_item_delta(path).stamp}"


def test_a_delta_extends_one_bundle_and_leaves_it_as_it_was(built, delta, tmp_path):
    path, _, new_id, bundle = delta
    extended = extend(bundle, load_item_delta(path))
    assert (
        extended.index.ntotal == bundle.index.ntotal + 1
        and bundle.items.rows_of(np.array([new_id])).size == 0
    )
    assert extended.items.rows_of(np.array([new_id])).tolist() == [len(bundle.items.item_ids)]
    old_ids = bundle.items.item_ids[:50]
    assert extended.items.rows_of(old_ids).tolist() == bundle.items.rows_of(old_ids).tolist()
    other = new_version_of(built.bundle, tmp_path / "other", "v-other")
    state = ServingState(SERVING_DEFAULTS.with_overrides({"bundle": str(other)}), parts=("history",))
    state.reconfigure({})
    state.reconfigure({"item_delta": str(path)})  # a delta of another bundle: refused, nothing changes
    assert state.current.bundle.version == "v-other" and "extends bundle" in state.refused["error"]
    with pytest.raises(BundleError, match="not an item delta"):
        load_item_delta(tmp_path / "missing.npz")
