"""The single-process baseline: the same stages behind plain FastAPI + uvicorn, no Ray.

What a user might write instead of Ray Serve, and the yardstick for what Serve's proxy and handle hops
cost. Not part of the product. It reuses serve_app's schemas, middleware, error handlers, RecommendFlow
and stage functions, so the only difference from the served app is how the stages are hosted.
Run: python -m loadtest.baseline_app --bundle artifacts/current --repo feature_repo --port 8002
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI, HTTPException, Request

from serve_app.bundle import load_bundle
from serve_app.flow import Overloaded, RecommendFlow, in_process_stages, to_response
from serve_app.http import RequestContextMiddleware, install_error_handlers
from serve_app.schemas import HealthResponse, RecommendRequest, RecommendResponse, VersionResponse
from serve_app.stages import pipeline
from serve_app.stages.user_features import UserFeatureReader, feast_fetcher

ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG = ROOT / "cluster" / "serve_config.yaml"


def stage_settings(config: Path = SERVE_CONFIG) -> dict[str, Any]:
    """The app args the served graph runs with, so every target uses the same n_candidates, TTLs, ..."""
    args = yaml.safe_load(config.read_text())["applications"][0]["args"]
    return {
        "n_candidates": int(args.get("n_candidates", 200)),
        "request_timeout_s": float(args.get("request_timeout_s", 1.0)),
        "user_features_timeout_s": float(args.get("user_features_timeout_ms", 50)) / 1000,
        "user_features_cache_ttl_s": float(args.get("user_features_cache_ttl_s", 30)),
        "blocked_item_ids": [int(i) for i in args.get("blocked_item_ids", [])],
    }


def create_app(bundle_path: Path, repo: Path, settings: dict[str, Any] | None = None) -> FastAPI:
    s = settings or stage_settings()
    bundle = load_bundle(bundle_path)
    fetch = feast_fetcher(repo)
    fetch(-1)  # the first read loads the registry (~100s of ms); UserFeatures pays it at start-up too
    reader = UserFeatureReader(fetch, s["user_features_timeout_s"], s["user_features_cache_ttl_s"])
    filters = pipeline.filters_for(bundle, s["blocked_item_ids"])

    # The same stages the colocated topology runs in its ingress, without Serve around them.
    flow = RecommendFlow(*in_process_stages(lambda: bundle, lambda: filters, reader))
    api = FastAPI(title="recsys single-process baseline (loadtest only)")
    install_error_handlers(api)
    api.add_middleware(RequestContextMiddleware)

    @api.post("/recommend", response_model=RecommendResponse)
    async def recommend(body: RecommendRequest, request: Request) -> RecommendResponse:
        start = time.perf_counter()
        try:
            result = await flow.run(
                bundle,
                filters,
                body.user_id,
                body.k,
                tuple(body.exclude_item_ids),
                s["n_candidates"],
                s["request_timeout_s"],
            )
        except Overloaded as exc:  # cannot happen without queues, but keep the served contract
            raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from exc
        return to_response(result, body, request.state.request_id, (time.perf_counter() - start) * 1000)

    @api.get("/healthz", response_model=HealthResponse)
    async def healthz() -> HealthResponse:
        return HealthResponse(status="ok", bundle_version=bundle.version)

    @api.get("/version", response_model=VersionResponse)
    async def version() -> VersionResponse:
        return VersionResponse(
            bundle_version=bundle.version, bundle_path=str(bundle.path), stages={"baseline": bundle.version}
        )

    return api


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m loadtest.baseline_app")
    parser.add_argument("--bundle", default=str(ROOT / "artifacts" / "current"))
    parser.add_argument("--repo", default=str(ROOT / "feature_repo"))
    parser.add_argument("--config", default=str(SERVE_CONFIG), help="serve config to take stage args from")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args(argv)
    os.environ.setdefault("FEAST_DISABLE_USAGE", "1")
    app = create_app(Path(args.bundle), Path(args.repo), stage_settings(Path(args.config)))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
