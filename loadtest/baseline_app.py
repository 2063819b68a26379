"""The single-process baseline: the same stages behind plain FastAPI + uvicorn, no Ray.

What a user might write instead of Ray Serve, and the yardstick for what Serve's proxy and handle hops
cost. Not part of the product. It reuses serve_app's HTTP front, RecommendFlow and in-process stages,
so the only difference from the served app is how the stages are hosted.
Run: python -m loadtest.baseline_app --bundle artifacts/current --repo feature_repo --port 8002
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import yaml
from fastapi import FastAPI, Request

from serve_app.api.http import create_api
from serve_app.api.schemas import (
    HealthResponse,
    RecommendRequest,
    RecommendResponse,
    VersionResponse,
    to_response,
)
from serve_app.core.settings import AppArgs, ServingSettings
from serve_app.request.flow import in_process_flow

ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG = ROOT / "cluster" / "serve_config.yaml"


def stage_settings(config: Path = SERVE_CONFIG) -> ServingSettings:
    """The settings the served app runs with (its app args), so every target uses the same ones."""
    args = yaml.safe_load(config.read_text())["applications"][0].get("args") or {}
    return AppArgs.model_validate(args).serving()


def create_app(bundle_path: Path, repo: Path, settings: ServingSettings | None = None) -> FastAPI:
    flow, _ = in_process_flow(bundle_path, repo, settings or stage_settings())
    bundle = flow.state.current.bundle
    api = create_api(title="recsys single-process baseline (loadtest only)")

    @api.post("/recommend", response_model=RecommendResponse)
    async def recommend(body: RecommendRequest, request: Request) -> RecommendResponse:
        start = time.perf_counter()
        result = await flow.run(body.user_id, body.k, tuple(body.exclude_item_ids))
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
