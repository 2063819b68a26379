"""The serving settings: strict models where an unknown key is an error, not a silently ignored typo.

`ServingSettings` is the one place the serving defaults live: the app args, every deployment's
`user_config`, the single-process baseline and the benchmark's floor all take them from here, and
docs/ops.md lists them (a test compares the two). A key that was removed is refused with what to do
instead (`REMOVED`), not only as unknown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve_app.core.paths import resolve_path

# Keys older configs may still carry, and what to do about each.
REMOVED = {
    "admission": "the in-ingress admission limit was removed: the front door (cluster/balancer.yaml) "
    "refuses past capacity before any replica pays for it. Delete the key",
    "admission_tolerance": "it tuned the removed admission limit. Delete the key",
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def refuse_removed(data: Any) -> Any:
    """A clear error for a key this version no longer takes (pydantic would only say 'extra')."""
    if isinstance(data, dict):
        for key, why in REMOVED.items():
            if key in data:
                raise ValueError(f"`{key}` is no longer a setting: {why}")
    return data


class ServingSettings(Strict):
    """What a serving replica may be told, at deploy (app args) or later (a deployment's user_config).

    A `user_config` overrides only the keys it names: `with_overrides` lays it over the app args, so a
    rollout that names just the bundle keeps the business rules, deadlines and batch sizes, and every
    replica (old or newly started) computes the same settings from the same deploy.
    """

    bundle: str = Field("artifacts/current", description="bundle directory; `current` is resolved at deploy")
    # A canary (request/canary.py, `recsys rollout`): this share of users, by a stable hash of their
    # id, is served by another bundle, held beside the main one in every replica.
    canary_bundle: str | None = Field(None, description="bundle directory the canary arm serves")
    canary_share: float = Field(0.0, ge=0, le=1, description="share of users the canary bundle serves")
    # Items that arrived after the build (core/item_delta.py, `recsys items add`).
    item_delta: str | None = Field(None, description="an item delta file extending the main bundle")
    n_candidates: int = Field(200, ge=1, le=5_000, description="retrieval depth handed to the ranker")
    request_timeout_s: float = Field(1.0, gt=0, le=60, description="deadline for the whole stage chain")
    user_features_timeout_ms: float = Field(50, gt=0, le=10_000, description="online-store read deadline")
    user_features_cache_ttl_s: float = Field(
        30,
        ge=0,
        description="how long a read is cached (a user whose events an ingress pushed reads past it)",
    )
    user_features_stale_s: float = Field(
        3_600, ge=0, description="how old a cached read may be to stand in for a failed store"
    )
    blocked_item_ids: tuple[int, ...] = Field((), description="business rule: never recommend these")
    max_batch_size: int = Field(16, ge=1, le=1_024, description="Retriever and Ranker @serve.batch size")
    batch_wait_timeout_s: float = Field(0.001, ge=0, le=1, description="@serve.batch wait for a full batch")
    ingress_batch_size: int = Field(
        1,
        ge=1,
        le=1_024,
        description="graph: up to this many concurrent requests' stage calls leave an ingress as one handle "
        "call (serve/coalesce.py); 1: a call per request",
    )
    # Brownout (request/brownout.py): a cheaper answer, flagged degraded, past this many in flight.
    brownout_rank_above: int | None = Field(
        None, ge=1, description="requests in flight per ingress beyond which ranking is skipped; null: never"
    )
    brownout_popular_above: int | None = Field(
        None, ge=1, description="... beyond which retrieval is skipped too (the popularity list); null: never"
    )
    # Observability (docs/ops.md, "Metrics"); all off the request path or sampled.
    recall_sample_rate: float = Field(
        0.01, ge=0, le=1, description="share of retrieval queries the online ANN recall monitor checks"
    )
    exposure_window: int = Field(10_000, ge=1, description="answers the live exposure gauges look back over")
    request_log_sample_rate: float = Field(
        0.01, ge=0, le=1, description="share of requests logged as one structured (JSON) line each"
    )
    stage_metrics_sample_rate: float = Field(
        0.1,
        ge=0,
        le=1,
        description="share of requests whose stage times and feature age are observed in the stage "
        "histograms (the whole request's time, outcome and candidates: every request)",
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_removed(cls, data: Any) -> Any:
        return refuse_removed(data)

    def with_overrides(self, overrides: dict[str, Any] | None) -> ServingSettings:
        """These settings with the keys `overrides` names replaced (validated; unknown keys are errors)."""
        base = self.model_dump(include=set(ServingSettings.model_fields))
        return ServingSettings.model_validate({**base, **(overrides or {})})

    def bundle_path(self) -> Path:
        return resolve_path(self.bundle)

    def canary_path(self) -> Path | None:
        return resolve_path(self.canary_bundle) if self.canary_bundle else None

    def item_delta_path(self) -> Path | None:
        return resolve_path(self.item_delta) if self.item_delta else None


SERVING_DEFAULTS = ServingSettings()


class AppArgs(ServingSettings):
    """Arguments of the application (the `args:` block of serve_config.yaml). Unknown keys are errors."""

    topology: Literal["graph", "colocated"] = Field(
        "graph",
        description="graph: Retriever and Ranker are their own autoscaled, batching deployments; colocated: "
        "the ingress runs every stage in-process (fewer hops; scale it with Ingress replicas)",
    )
    feature_repo: str = Field(
        "feature_repo", description="Feast repository (feature_store.yaml and registry)"
    )
    feature_store_yaml: str | None = Field(None, description="another feature_store.yaml, e.g. the Redis one")

    def serving(self) -> ServingSettings:
        return ServingSettings.model_validate(self.model_dump(include=set(ServingSettings.model_fields)))
