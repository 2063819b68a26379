"""What a replica serves (bundle, the filters built for it, its settings), swapped as one on reconfigure.

Pure (no ray import): every Serve deployment, the single-process baseline and the benchmark's floor hold
one `ServingState`. A bundle or settings that fail their checks are refused: the replica keeps serving
what it has and reports the refusal (GET /version), so a bad rollout never takes the service down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from serve_app.core.bundle import ALL_PARTS, Bundle, Part, load_bundle
from serve_app.core.errors import BundleError, ConfigError, DataError
from serve_app.core.item_delta import extend, load_item_delta
from serve_app.core.settings import ServingSettings
from serve_app.request.canary import CANARY, MAIN, Split
from serve_app.request.stages.filters import business_filters
from serve_app.request.stages.served import Served

log = logging.getLogger("ray.serve")
T = TypeVar("T")


@dataclass(frozen=True)
class Arms:
    """What a replica serves, replaced as one (reconfigure runs on a thread while requests read it)."""

    main: Served
    canary: Served | None = None
    split: Split | None = None
    # Bundles served just before (e.g. the main one a promote replaced): a Ranker still finds the
    # bundle that retrieved a request's candidates while a step reaches the replicas one by one.
    retired: tuple[Served, ...] = ()


RETIRED_KEPT = 2


class ServingState:
    """Holds the current `Served`, and a canary's beside it; `apply` installs new settings (loading a
    bundle only when it is not already held: promoting a canary reuses the one it loaded)."""

    def __init__(
        self,
        base: ServingSettings,
        parts: Collection[Part] = ALL_PARTS,
        canary: bool = True,
        keep_retired: bool = False,
    ) -> None:
        """`canary=False`: ignore canary settings (the EventWriter folds events in with the main model).
        `keep_retired`: keep the last bundles served before (the Ranker's: model and items, small)."""
        self.base, self.parts, self.takes_canary = base, frozenset(parts), canary
        self.keep_retired = RETIRED_KEPT if keep_retired else 0
        self._arms: Arms | None = None
        self._bases: tuple[Bundle, ...] = ()  # the bundles as loaded, before any item delta
        self._extended: tuple[tuple[int, Path], Bundle] | None = None
        self.refused: dict[str, str] | None = None

    @property
    def arms(self) -> Arms:
        arms = self._arms
        if arms is None:
            raise RuntimeError("no bundle loaded yet (the deployment's reconfigure has not run)")
        return arms

    @property
    def _served(self) -> Served | None:
        return self._arms.main if self._arms is not None else None

    @property
    def current(self) -> Served:
        """The main arm's bundle and settings (the settings are the whole replica's)."""
        return self.arms.main

    @property
    def canary(self) -> Served | None:
        return self.arms.canary

    def for_user(self, user_id: int) -> Served:
        """The arm serving this user: the canary's for its share of users, else the main one."""
        arms = self.arms
        if arms.canary is not None and arms.split is not None and arms.split.arm(user_id) == CANARY:
            return arms.canary
        return arms.main

    def for_version(self, version: str) -> Served | None:
        """The bundle of that version held or just retired (the ranker follows its candidates'
        version), or None: then nothing here may rank them."""
        arms = self.arms
        for served in (arms.main, arms.canary, *arms.retired):
            if served is not None and served.bundle.version == version:
                return served
        return None

    def arm_of(self, version: str) -> str:
        canary = self.arms.canary
        return CANARY if canary is not None and canary.bundle.version == version else MAIN

    def reconfigure(self, user_config: dict[str, Any] | None) -> ServingSettings:
        """Apply the app args with `user_config` laid over them; refuse what fails its checks."""
        try:
            settings = self.base.with_overrides(user_config)
        except ValidationError as exc:
            return self._refuse(str(user_config), ConfigError(f"user_config refused: {exc}"))
        return self.apply(settings)

    def apply(self, settings: ServingSettings) -> ServingSettings:
        held = list(self._bases)
        try:
            base = self._load(settings.bundle_path(), held)
        except BundleError as exc:
            return self._refuse(settings.bundle, exc)
        canary_path = settings.canary_path() if self.takes_canary else None
        try:
            canary = self._load(canary_path, [*held, base]) if canary_path is not None else None
        except BundleError as exc:  # a bad canary leaves both arms as they were
            return self._refuse(f"canary {settings.canary_bundle}", exc)
        try:
            bundle = self._with_items(base, settings.item_delta_path())
        except (BundleError, DataError) as exc:  # a bad delta: the bundle serves as it did
            return self._refuse(f"item delta {settings.item_delta}", exc)
        if canary is not None and canary.version == bundle.version:
            canary = None  # the same version on both arms is no canary
        main = Served(bundle, business_filters(bundle.items, settings.blocked_item_ids), settings)
        arms = Arms(main)
        if canary is not None:
            blocked = business_filters(canary.items, settings.blocked_item_ids)
            arms = Arms(main, Served(canary, blocked, settings), Split(settings.canary_share, canary.version))
        old = self._arms
        if old is not None:
            kept = {s.bundle.version for s in (arms.main, arms.canary) if s is not None}
            left = [s for s in (old.main, old.canary, *old.retired) if s is not None]
            retired = tuple(s for s in left if s.bundle.version not in kept)[: self.keep_retired]
            arms = replace(arms, retired=retired)
        self._arms = arms  # one assignment: a request sees the old arms or the new, never a mix
        self._bases = tuple(b for b in (base, canary) if b is not None)
        self.refused = None
        return settings

    def _load(self, path: Path, held: list[Bundle]) -> Bundle:
        for bundle in held:
            if bundle.path == path:
                return bundle
        return load_bundle(path, self.parts)

    def _with_items(self, base: Bundle, delta_path: Path | None) -> Bundle:
        """The base bundle, extended by the item delta if one is named (kept while it is unchanged)."""
        if delta_path is None:
            self._extended = None  # its index copy is not kept once the delta is dropped
            return base
        key = (id(base), delta_path)
        if self._extended is None or self._extended[0] != key:
            self._extended = (key, extend(base, load_item_delta(delta_path)))
        return self._extended[1]

    def _refuse(self, what: str, exc: BundleError | ConfigError) -> ServingSettings:
        self.refused = {"path": what, "error": str(exc)}
        if self._served is None:
            raise exc  # nothing to fall back to: fail the deploy with the reason
        log.error("refusing %s, still serving %s: %s", what, self._served.bundle.version, exc)
        return self._served.settings


def per_arm(served_of: Sequence[Served], fn: Callable[[Served, list[int]], list[T]]) -> list[T]:
    """`fn(served, indices)` once per bundle among `served_of` (a batch's requests may span both arms
    of a canary), its answers put back in the batch's order."""
    groups: dict[int, tuple[Served, list[int]]] = {}
    for i, served in enumerate(served_of):
        groups.setdefault(id(served), (served, []))[1].append(i)
    if len(groups) == 1:
        [(served, idx)] = groups.values()
        return fn(served, idx)
    out: list[Any] = [None] * len(served_of)
    for served, idx in groups.values():
        for i, answer in zip(idx, fn(served, idx), strict=True):
            out[i] = answer
    return out
