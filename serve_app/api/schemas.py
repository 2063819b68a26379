"""HTTP models: what a client may send and what it gets back (docs/architecture.md, "The HTTP contract"),
and the answer built from a request flow's result."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from serve_app.request.stages.scored import Scored

MAX_K = 100
MAX_EXCLUDE = 1_000
# A valid /recommend is at most ~20 KB (1,000 excluded ids); anything far beyond is refused with 413.
# POST /events takes up to 1,000 events of at most ~300 bytes each.
MAX_BODY_BYTES = 320 * 1024


class RecommendRequest(BaseModel):
    # strict: "5" is not an int and true is not a number; extra=forbid: a typo is an error, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True)

    user_id: int = Field(ge=0, le=2**63 - 1, description="The user to recommend to")
    k: int = Field(10, ge=1, le=MAX_K, description=f"How many items to return (1..{MAX_K})")
    exclude_item_ids: list[int] = Field(
        default_factory=list, max_length=MAX_EXCLUDE, description="Items that must not be recommended"
    )
    debug: bool = Field(False, description="Add per-stage timings and filter counts to the answer")


class ItemScore(BaseModel):
    item_id: int
    score: float


class RecommendResponse(BaseModel):
    user_id: int
    items: list[ItemScore]
    bundle_version: str
    degraded: bool = Field(description="True when part of the pipeline failed and the answer is a fallback")
    fallback: str | None = Field(
        description="Why the normal path was not used: unknown_user, missing_embedding, "
        "user_features_unavailable, model_mismatch, retriever_unavailable, ranker_unavailable, "
        "bundle_changed, brownout; from the front door past capacity: overloaded, ingress_unavailable; "
        "null when it was"
    )
    request_id: str
    degraded_reason: str | None = None
    timings_ms: dict[str, float] | None = None
    filtered: dict[str, int] | None = None
    user_features: dict[str, Any] | None = Field(
        None, description="With debug: the user's online features this answer used (counts, recency, ...)"
    )


class ErrorResponse(BaseModel):
    error: str
    message: str
    request_id: str | None = None
    details: list[dict] | None = None


class CanaryInfo(BaseModel):
    """A canary in progress (`recsys rollout`): the bundle its share of users get, and what each stage
    holds as its canary ("none": that replica has not taken the rollout yet)."""

    bundle_version: str
    share: float
    stages: dict[str, str]


class VersionResponse(BaseModel):
    """What serves, by version: no filesystem path is part of the public answer (operators find the
    bundles' directories in the deployed config, through Serve's authenticated REST API)."""

    bundle_version: str
    stages: dict[str, str]
    refused: dict[str, str] | None = None
    canary: CanaryInfo | None = None
    # Items added since the build (`recsys items add`): the delta's stamp and how many items it holds.
    item_delta: dict[str, str | int] | None = None


class PopularResponse(BaseModel):
    """The main bundle's popularity list with the business rules applied, best first: what the front
    door answers with when no replica can take a request in time."""

    bundle_version: str
    items: list[ItemScore]


_PATH = re.compile(r"(?:/[^\s/:'\"(),]+)+/([^\s/:'\"(),]+)")


def without_paths(text: str) -> str:
    """`text` with every absolute path reduced to its last part (a bundle's directory is its version)."""
    return _PATH.sub(r"\1", text)


class HealthResponse(BaseModel):
    status: str
    bundle_version: str


def to_response(
    result: Scored, body: RecommendRequest, request_id: str, elapsed_ms: float
) -> RecommendResponse:
    """The HTTP answer for a flow result: top k, and timings and filter counts when debug is asked."""
    k = body.k
    return RecommendResponse(
        user_id=body.user_id,
        items=[
            ItemScore(item_id=int(i), score=float(s))
            for i, s in zip(result.item_ids[:k], result.scores[:k], strict=True)
        ],
        bundle_version=result.bundle_version,
        degraded=result.degraded,
        fallback=result.fallback,
        degraded_reason=result.reason,
        request_id=request_id,
        timings_ms={**result.timings_ms, "total": round(elapsed_ms, 3)} if body.debug else None,
        filtered=result.filtered if body.debug else None,
        user_features=_plain(result.user_features) if body.debug else None,
    )


def _plain(values: Any) -> dict[str, Any]:
    """The user's features as JSON values (the store hands back numpy arrays and scalars)."""
    return {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in dict(values).items()}
