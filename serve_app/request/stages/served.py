"""What one arm of a replica serves: a bundle, the filters built for it and the settings, as one value.

`ServingState` (request/serving_state.py) holds one per arm and swaps them whole on reconfigure; every
stage takes the `Served` its request belongs to, so a request never mixes two bundles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serve_app.core.bundle import Bundle
from serve_app.core.settings import ServingSettings
from serve_app.request.stages.filters import Filter, FilterContext


@dataclass(frozen=True)
class Served:
    bundle: Bundle
    filters: tuple[Filter, ...]
    settings: ServingSettings

    def context(
        self, user_id: int, exclude_item_ids: tuple[int, ...], recent_item_ids: np.ndarray | None = None
    ) -> FilterContext:
        """`recent_item_ids`: items of the user's events since the bundle was built (their online
        row), seen as much as the bundle's history; appended last, as the newest, once each."""
        excluded = self.bundle.items.rows_of(np.asarray(exclude_item_ids, dtype=np.int64))
        seen = self.bundle.history.seen(user_id)
        if recent_item_ids is not None and len(recent_item_ids):
            recent = self.bundle.items.rows_of(np.asarray(recent_item_ids, dtype=np.int64))
            seen = np.concatenate([seen[~np.isin(seen, recent)], recent])
        return FilterContext(user_id, seen, excluded)
