"""recsys-serve: a two-stage recommender (FAISS retrieval, XGBoost ranking, Feast features) on Ray Serve.

One folder per job; each says in its own docstring what it owns and what it may import. Imports point
down this list, never up (tests/unit/test_layout.py enforces it):

    core/       settings, errors, paths, the feature transformation, artifacts and the bundle
    request/    the request path: serving state, the flow, its stages, deadlines, brownout
    api/        the HTTP contract: request and response models, FastAPI plumbing
    events/     POST /events and freshness: the event log, a user's row after events, new items
    telemetry/  what is measured and logged (pure): series, exposure, online recall, request log
    offline/    the build: data, Feast sources, embeddings, index, ranker, evaluation
    control/    operating a running service: rollout, retrain, KubeRay, the front door's config,
                the one client of Serve's REST API
    serve/      the Ray Serve layer: deployments and the app (the only code that imports ray)
    cli/        `recsys`, a module per command group

`serve_app.app:build_app` is the import path Serve configs name (serve_app/app.py). The local harness
that starts clusters and services for `make` and the tests is the top-level `harness` package, not
part of this one.
"""
