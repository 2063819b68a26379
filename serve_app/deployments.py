"""Thin Serve wrappers around the pure stages. Artifacts arrive through user_config -> reconfigure().

A bundle that fails its checks on reconfigure is refused: the replica keeps serving the bundle it has
and reports the refusal (GET /version), so a bad rollout never takes the service down.
"""

from __future__ import annotations

import logging
from typing import Any

from ray import serve

from serve_app.bundle import Bundle, load_bundle
from serve_app.errors import BundleError
from serve_app.stages import pipeline
from serve_app.stages.pipeline import Scored
from serve_app.stages.user_features import UserFeatureReader, UserFeatureResult, feast_fetcher

log = logging.getLogger("ray.serve")


class BundleHolder:
    """The bundle a replica serves, swapped atomically on reconfigure; a bad one is refused."""

    def __init__(self) -> None:
        self.bundle: Bundle | None = None
        self.path: str | None = None
        self.refused: dict[str, str] | None = None

    def load(self, path: str) -> bool:
        """True when a new bundle was installed."""
        if path == self.path and self.bundle is not None:
            return False
        try:
            bundle = load_bundle(path)
        except BundleError as exc:
            self.refused = {"path": path, "error": str(exc)}
            if self.bundle is None:
                raise  # nothing to fall back to: fail the deploy with the reason
            log.error("refusing bundle %s, still serving %s: %s", path, self.bundle.version, exc)
            return False
        self.bundle, self.path, self.refused = bundle, path, None
        return True

    def require(self) -> Bundle:
        if self.bundle is None:
            raise RuntimeError("no bundle loaded")
        return self.bundle


def open_reader(feature_repo: str, feature_store_yaml: str | None) -> UserFeatureReader:
    fetch = feast_fetcher(feature_repo, feature_store_yaml)
    # The first read loads the registry and opens the store (~100s of ms): pay it before traffic.
    try:
        fetch(-1)
    except Exception as exc:  # a store down at start-up degrades requests; it must not block start-up
        log.warning("online store not reachable at start-up: %s", exc)
    return UserFeatureReader(fetch)


def configure_reader(reader: UserFeatureReader, config: dict[str, Any]) -> None:
    reader.timeout_s = float(config.get("timeout_ms", 50)) / 1000
    reader.ttl_s = float(config.get("cache_ttl_s", 30))
    reader.stale_s = float(config.get("stale_s", 3_600))


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class UserFeatures:
    """One FeatureStore per replica, a deadline on every read, a small TTL cache."""

    def __init__(self, feature_repo: str, feature_store_yaml: str | None = None) -> None:
        self.reader = open_reader(feature_repo, feature_store_yaml)

    def reconfigure(self, config: dict[str, Any]) -> None:
        configure_reader(self.reader, config)

    async def get(self, user_id: int) -> UserFeatureResult:
        return await self.reader.aget(user_id)

    async def ready(self) -> bool:
        return True

    def check_health(self) -> None:
        if self.reader is None:
            raise RuntimeError("user feature reader not initialised")


class _BatchedStage:
    holder: BundleHolder

    def _configure_batching(self, method: Any, config: dict[str, Any]) -> None:
        method.set_max_batch_size(int(config.get("max_batch_size", 16)))
        method.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", 0.001)))

    def check_health(self) -> None:
        self.holder.require()

    def version(self) -> dict[str, Any]:
        return {"version": self.holder.require().version, "refused": self.holder.refused}


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32)
class Retriever(_BatchedStage):
    """FAISS top-N over the bundle's index, minus seen, excluded and blocked items."""

    def __init__(self) -> None:
        self.holder = BundleHolder()
        self.filters: list = []
        self.blocked: tuple[int, ...] = ()

    def reconfigure(self, config: dict[str, Any]) -> None:
        blocked = tuple(config.get("blocked_item_ids", ()))
        if self.holder.load(config["bundle"]) or blocked != self.blocked:
            self.filters, self.blocked = pipeline.filters_for(self.holder.require(), blocked), blocked
        self._configure_batching(self.retrieve, config)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.001)
    async def retrieve(
        self, features: list[UserFeatureResult], n: list[int], exclude: list[tuple[int, ...]]
    ) -> list[Scored]:
        bundle = self.holder.require()
        return pipeline.retrieve_batch(bundle, self.filters, list(zip(features, n, exclude, strict=True)))


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32)
class Ranker(_BatchedStage):
    """XGBoost over candidates joined with the bundle's in-memory item snapshot."""

    def __init__(self) -> None:
        self.holder = BundleHolder()

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.holder.load(config["bundle"])
        self._configure_batching(self.rank, config)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.001)
    async def rank(self, features: list[UserFeatureResult], candidates: list[Scored]) -> list[Scored]:
        return pipeline.rank_candidates(self.holder.require(), list(zip(features, candidates, strict=True)))
