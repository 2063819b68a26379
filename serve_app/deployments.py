"""Thin Serve wrappers around the pure stages: UserFeatures, Retriever, Ranker.

Each deployment is constructed with the app's settings (its args) and gets its `user_config` through
`reconfigure()`, laid over those settings (`ServingSettings.with_overrides`). Each loads only the parts
of the bundle it serves; a bad bundle is refused and the replica keeps serving the one it has.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from pydantic import ValidationError
from ray import serve

from serve_app.bundle import Part
from serve_app.config import SERVING_DEFAULTS, ServingSettings
from serve_app.metrics import BatchSizes, BundleInfo, FeatureMetrics, RecallGauge
from serve_app.recall_monitor import RecallMonitor
from serve_app.serving_state import ServingState
from serve_app.stages.rank import rank_candidates
from serve_app.stages.retrieve import query_vector, retrieve_batch
from serve_app.stages.scored import Scored
from serve_app.stages.user_features import Observe, UserFeatureReader, UserFeatureResult, feast_fetcher

log = logging.getLogger("ray.serve")


def open_reader(
    feature_repo: str,
    feature_store_yaml: str | None,
    settings: ServingSettings,
    observe: Observe | None = None,
) -> UserFeatureReader:
    fetch = feast_fetcher(feature_repo, feature_store_yaml)
    # The first read loads the registry and opens the store (~100s of ms): pay it before traffic.
    try:
        fetch(-1)
    except Exception as exc:  # a store down at start-up degrades requests; it must not block start-up
        log.warning("online store not reachable at start-up: %s", exc)
    return UserFeatureReader(fetch, settings, observe=observe)


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class UserFeatures:
    """One FeatureStore per replica, a deadline on every read, a small TTL cache."""

    def __init__(self, settings: dict[str, Any], feature_repo: str, feature_store_yaml: str | None) -> None:
        self.base = ServingSettings.model_validate(settings)
        # The ingress records the other stages' times; this replica the reads it makes.
        observe = FeatureMetrics("graph").observe
        self.reader = open_reader(feature_repo, feature_store_yaml, self.base, observe)
        self.configured = False

    def reconfigure(self, config: dict[str, Any] | None) -> None:
        """Like the bundle stages: a bad user_config fails the first deploy, and is refused (logged,
        the current settings kept) on a replica that is already serving."""
        try:
            settings = self.base.with_overrides(config)
        except ValidationError:
            if not self.configured:
                raise
            log.exception("refusing user_config %s, keeping the current settings", config)
            return
        self.reader.configure(settings)
        self.configured = True

    async def get(self, user_id: int) -> UserFeatureResult:
        return await self.reader.aget(user_id)

    async def ready(self) -> bool:
        return True


class _BundleStage:
    """A batched stage over the parts of the bundle it serves."""

    parts: ClassVar[frozenset[Part]]
    batched: ClassVar[str]  # the @serve.batch method whose batching the settings tune

    def __init__(self, settings: dict[str, Any]) -> None:
        self.state = ServingState(ServingSettings.model_validate(settings), self.parts)
        self.batch_sizes = BatchSizes(self.batched)
        self.bundle_info = BundleInfo()

    def reconfigure(self, config: dict[str, Any] | None) -> None:
        settings = self.state.reconfigure(config)
        method = getattr(self, self.batched)
        method.set_max_batch_size(settings.max_batch_size)
        method.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self.bundle_info.serving(self.state.current.bundle.version)

    def check_health(self) -> None:
        self.state.current  # noqa: B018 -- raises until reconfigure has loaded a bundle

    def version(self) -> dict[str, Any]:
        return {"version": self.state.current.bundle.version, "refused": self.state.refused}


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32)
class Retriever(_BundleStage):
    """FAISS top-N over the bundle's index, minus seen, excluded and blocked items."""

    parts = frozenset(("index", "history"))
    batched = "retrieve"

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__(settings)
        self.recall = RecallMonitor(RecallGauge().publish, sample_rate=0.0, depth=1)  # see reconfigure

    def reconfigure(self, config: dict[str, Any] | None) -> None:
        super().reconfigure(config)
        settings = self.state.current.settings
        self.recall.configure(settings.recall_sample_rate, settings.n_candidates)

    @serve.batch(
        max_batch_size=SERVING_DEFAULTS.max_batch_size,
        batch_wait_timeout_s=SERVING_DEFAULTS.batch_wait_timeout_s,
    )
    async def retrieve(
        self, features: list[UserFeatureResult], n: list[int], exclude: list[tuple[int, ...]]
    ) -> list[Scored]:
        self.batch_sizes.observe(features)
        served = self.state.current
        out = retrieve_batch(served, list(zip(features, n, exclude, strict=True)))
        bundle = served.bundle
        self.recall.offer(bundle.version, bundle.index, features, lambda f: query_vector(f, bundle)[0])
        return out


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32)
class Ranker(_BundleStage):
    """XGBoost over candidates joined with the bundle's in-memory item snapshot."""

    parts = frozenset(("ranker",))
    batched = "rank"

    @serve.batch(
        max_batch_size=SERVING_DEFAULTS.max_batch_size,
        batch_wait_timeout_s=SERVING_DEFAULTS.batch_wait_timeout_s,
    )
    async def rank(self, features: list[UserFeatureResult], candidates: list[Scored]) -> list[Scored]:
        self.batch_sizes.observe(features)
        return rank_candidates(self.state.current.bundle, list(zip(features, candidates, strict=True)))
