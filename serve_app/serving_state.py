"""What a replica serves (bundle, the filters built for it, its settings), swapped as one on reconfigure.

Pure (no ray import): every Serve deployment, the single-process baseline and the benchmark's floor hold
one `ServingState`. A bundle or settings that fail their checks are refused: the replica keeps serving
what it has and reports the refusal (GET /version), so a bad rollout never takes the service down.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from serve_app.bundle import ALL_PARTS, Bundle, Part, load_bundle
from serve_app.config import ServingSettings
from serve_app.errors import BundleError, ConfigError
from serve_app.stages.filters import Filter, FilterContext, business_filters

log = logging.getLogger("ray.serve")


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


class ServingState:
    """Holds the current `Served`; `apply` installs new settings (loading the bundle only if it moved)."""

    def __init__(self, base: ServingSettings, parts: Collection[Part] = ALL_PARTS) -> None:
        self.base, self.parts = base, frozenset(parts)
        self._served: Served | None = None
        self.refused: dict[str, str] | None = None

    @property
    def current(self) -> Served:
        if self._served is None:
            raise RuntimeError("no bundle loaded yet (the deployment's reconfigure has not run)")
        return self._served

    def reconfigure(self, user_config: dict[str, Any] | None) -> ServingSettings:
        """Apply the app args with `user_config` laid over them; refuse what fails its checks."""
        try:
            settings = self.base.with_overrides(user_config)
        except ValidationError as exc:
            return self._refuse(str(user_config), ConfigError(f"user_config refused: {exc}"))
        return self.apply(settings)

    def apply(self, settings: ServingSettings) -> ServingSettings:
        old = self._served
        try:
            path = settings.bundle_path()
            if old is not None and old.bundle.path == path:
                bundle = old.bundle
            else:
                bundle = load_bundle(path, self.parts)
        except BundleError as exc:
            return self._refuse(settings.bundle, exc)
        self._served = Served(bundle, business_filters(bundle.items, settings.blocked_item_ids), settings)
        self.refused = None
        return settings

    def _refuse(self, what: str, exc: BundleError | ConfigError) -> ServingSettings:
        self.refused = {"path": what, "error": str(exc)}
        if self._served is None:
            raise exc  # nothing to fall back to: fail the deploy with the reason
        log.error("refusing %s, still serving %s: %s", what, self._served.bundle.version, exc)
        return self._served.settings
