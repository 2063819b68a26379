"""The Redis online store of a local cluster (`make run STORE=redis`, and the tests that do the same):
a fresh redis-server loaded with the Feast CLI, and the serve config that points the app at it.

The address reaches the replicas as REDIS_CONNECTION_STRING in the application's runtime_env, which
Ray applies to every replica on every node, the way an operator would ship it to a real cluster.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from serve_app import redis_server

REDIS_YAML = "feature_store.redis.yaml"  # in the Feast repository the app serves from
REDIS_ENV = "REDIS_CONNECTION_STRING"  # what feature_store.redis.yaml reads the address from


def start_loaded(
    directory: Path, repo: Path, started: Callable[[redis_server.RedisServer], None] = lambda _: None
) -> redis_server.RedisServer:
    """A redis-server on a free loopback port with `directory` as its own (emptied first), loaded from
    `repo` with `feast apply` + `feast materialize-incremental`. `started` is called before the load,
    so a caller can record the server (to stop it) even if the load fails."""
    from serve_app.offline import feast_ops  # imports Feast: paid only by callers that load a store

    shutil.rmtree(directory, ignore_errors=True)
    server = redis_server.start(directory)
    started(server)
    feast_ops.load_online_store(repo, repo / REDIS_YAML, {REDIS_ENV: server.address}, fresh=True)
    return server


def on_redis(config: dict, address: str) -> dict:
    """The serve config (a parsed serve_config.yaml) with every app reading the Redis store at
    `address`: the Redis yaml of its own Feast repo, and the address in its runtime_env."""
    for app in config["applications"]:
        args = app.setdefault("args", {})
        args["feature_store_yaml"] = str(Path(args.get("feature_repo", "feature_repo")) / REDIS_YAML)
        app.setdefault("runtime_env", {}).setdefault("env_vars", {})[REDIS_ENV] = address
    return config
