"""Where things are: the checkout, RECSYS_HOME, and the files `make run` leaves for other commands.

The one place the repository root is computed. Relative paths in the app args and `user_config`
(bundles, the Feast repo) resolve against RECSYS_HOME, or against the checkout this package is
installed from when that is unset. `make run` records the cluster it started in LOCAL_CLUSTER_STATE
(the harness writes it); the CLI reads it to find that cluster's dashboard and token. RECSYS_RUN_DIR
moves those files elsewhere (the tests start `make run`'s harness in a folder of their own).
`NODE_ENV` is what every Ray node running the app starts with (`ray start`'s environment).
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# What `make run` started here: state, token, logs (git-ignored).
RUN_DIR = Path(os.environ.get("RECSYS_RUN_DIR", PROJECT_ROOT / ".run"))
LOCAL_CLUSTER_STATE = RUN_DIR / "cluster.json"
NODE_ENV = {
    # Serve's HTTP proxy sends a request again when its Ingress replica died before answering, instead
    # of uvicorn's bare 500 (serve_app/serve/proxy_retry.py); the proxy reads this when it starts.
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serve_app.serve.proxy_retry:middlewares",
    # Replicas at their raylet's niceness, not Ray's 15 below it: 0 on a node of its own, like Ray's
    # processes; where the harness shares a node with the front door it renices the raylet (and so the
    # replicas) and Ray's daemons to 19, so the door answers first (docs/decisions.md, "Niceness").
    "RAY_worker_niceness": "0",
}


def home() -> Path:
    return Path(os.environ.get("RECSYS_HOME", PROJECT_ROOT))


def resolve_path(path: str | Path) -> Path:
    """Relative paths are relative to RECSYS_HOME, or to this checkout when that is unset."""
    p = Path(path)
    return (p if p.is_absolute() else home() / p).resolve()
