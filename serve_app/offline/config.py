"""What `recsys build` may be told (`--config` JSON): the evaluation protocol, embeddings, index and ranker.

Strict like the serving settings: an unknown key is an error. The defaults were chosen with `recsys
tune` on validation users (offline/evaluation/tune.py), never on the test users.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from serve_app.core.settings import Strict


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
