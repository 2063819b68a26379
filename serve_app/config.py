"""Strict configuration models: unknown keys are errors, not silently ignored typos.

`ServingSettings` is the one place the serving defaults live: the app args, every deployment's
`user_config`, the single-process baseline and the benchmark's floor all take them from here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def resolve_path(path: str | Path) -> Path:
    """Relative paths are relative to RECSYS_HOME, or to this checkout when that is unset."""
    p = Path(path)
    return (p if p.is_absolute() else Path(os.environ.get("RECSYS_HOME", PROJECT_ROOT)) / p).resolve()


class ServingSettings(Strict):
    """What a serving replica may be told, at deploy (app args) or later (a deployment's user_config).

    A `user_config` overrides only the keys it names: `with_overrides` lays it over the app args, so a
    rollout that names just the bundle keeps the business rules, deadlines and batch sizes, and every
    replica (old or newly started) computes the same settings from the same deploy.
    """

    bundle: str = Field("artifacts/current", description="bundle directory; `current` is resolved at deploy")
    # A canary (serve_app/canary.py, `recsys rollout`): this share of users, by a stable hash of their
    # id, is served by another bundle, held beside the main one in every replica.
    canary_bundle: str | None = Field(None, description="bundle directory the canary arm serves")
    canary_share: float = Field(0.0, ge=0, le=1, description="share of users the canary bundle serves")
    # Items that arrived after the build (serve_app/item_delta.py, `recsys items add`).
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
        "call (coalesce.py); 1: a call per request",
    )
    admission: Literal["adaptive", "unlimited"] = Field(
        "unlimited", description="adaptive: a learnt limit on requests in flight per ingress (admission.py)"
    )
    admission_tolerance: float = Field(
        2.0, ge=1.1, le=10, description="how many times its unloaded latency a request may take at the limit"
    )
    # Brownout (brownout.py): a cheaper answer, flagged degraded, when an ingress has this many in flight.
    brownout_rank_above: int | None = Field(
        None, ge=1, description="requests in flight per ingress beyond which ranking is skipped; null: never"
    )
    brownout_popular_above: int | None = Field(
        None, ge=1, description="... beyond which retrieval is skipped too (the popularity list); null: never"
    )
    # Observability (README "Operating it"); all off the request path or sampled.
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


class IndexConfig(Strict):
    """Which FAISS index to build. `auto` is exact below `exact_threshold` items, IVF above
    (IVF over the MIPS-to-L2 reduction of the item factors; see stages/retrieve.ItemIndex)."""

    kind: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    exact_threshold: int = Field(50_000, ge=1)
    ivf_nlist: int | None = Field(None, ge=1, description="default: 2*sqrt(n_items), at most 65536")
    # 64 of ~1,700 lists on 700k items: recall@200 vs exact 1.00 at 0.07 ms/query (2 threads).
    ivf_nprobe: int = Field(64, ge=1)
    hnsw_m: int = Field(32, ge=4, le=128)
    hnsw_ef_construction: int = Field(80, ge=8)
    hnsw_ef_search: int = Field(256, ge=8, description="raised to the fetch size when that is larger")


class EmbeddingConfig(Strict):
    """Chosen with `recsys tune` on ml-latest-small's validation users (offline/tune.py), strict protocol."""

    factors: int = Field(64, ge=2, le=1024)
    iterations: int = Field(15, ge=1, le=200)
    # Strong regularisation: at 1M sparse items weaker settings gave item norms 1000x apart and
    # retrieval worse than popularity; on ml-latest-small 1.0 and 0.1 scored within noise of it.
    regularization: float = Field(5.0, ge=0)
    # Validation retrieval NDCG@10: alpha 10 -> 0.084, 2 -> 0.100, 1 -> 0.099, 30 -> 0.079.
    alpha: float = Field(2.0, gt=0)
    recency_half_life: float | None = Field(
        10.0, gt=0, description="user vectors: an interaction's confidence halves every this many later ones"
    )


class RankerConfig(Strict):
    # Chosen on ml-latest-small's validation users, never the test users: rank:ndcg, rank:pairwise,
    # depth 2 or 5, learning rate 0.02 and 50 trees all scored no better than binary:logistic at depth
    # 3 (with ~250 training users, simple trees generalise best).
    objective: Literal["rank:ndcg", "rank:pairwise", "binary:logistic"] = "binary:logistic"
    n_estimators: int = Field(300, ge=1, le=5_000)
    max_depth: int = Field(3, ge=1, le=16)
    learning_rate: float = Field(0.05, gt=0, le=1)
    early_stopping_rounds: int = Field(50, ge=1)
    validation_fraction: float = Field(0.15, gt=0, lt=0.5)


class BuildConfig(Strict):
    protocol: Literal["per_user", "global"] = Field(
        "per_user",
        description="decision time of each evaluated user: their own (before their last holdout_fraction of "
        "interactions) or one global time (before the last holdout_fraction of all); see offline/split.py",
    )
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    min_user_interactions: int = Field(5, ge=2)
    valid_fraction: float = Field(
        0.2,
        ge=0,
        lt=0.5,
        description="share of split users kept for `recsys tune`, never trained or reported on",
    )
    max_users_per_group: int = Field(
        3_000, ge=10, description="users sampled for ranker training, validation and test"
    )
    n_candidates: int = Field(200, ge=10, le=5_000, description="retrieval depth fed to the ranker")
    eval_seeds: int = Field(3, ge=1, le=10, description="seeds the evaluation is averaged over")
    eval_snapshots: int | None = Field(
        None,
        ge=1,
        le=64,
        description="strict snapshot models per seed; default by data size (offline/strict.py)",
    )
    n_popular: int = Field(1_000, ge=10, description="length of the popularity fallback list")
    seed: int = 0
    embedding: EmbeddingConfig = EmbeddingConfig()
    index: IndexConfig = IndexConfig()
    ranker: RankerConfig = RankerConfig()

    @model_validator(mode="after")
    def _check(self) -> BuildConfig:
        if self.index.kind == "hnsw" and self.index.hnsw_ef_search < self.n_candidates:
            raise ValueError("index.hnsw_ef_search must be >= n_candidates, or HNSW cannot return them all")
        return self
