"""Where the running service is: `--address` with RAY_AUTH_TOKEN(_PATH), or the cluster `make run`
started in this checkout (its dashboard, token and metrics endpoint, recorded in LOCAL_CLUSTER_STATE)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from serve_app.control import rollout
from serve_app.core.errors import ConfigError
from serve_app.core.paths import LOCAL_CLUSTER_STATE


def connect(args: argparse.Namespace) -> tuple[rollout.ServeAdmin, str | None]:
    """The dashboard and its token: --address and RAY_AUTH_TOKEN(_PATH), or this checkout's `make run`."""
    state = json.loads(LOCAL_CLUSTER_STATE.read_text()) if LOCAL_CLUSTER_STATE.exists() else {}
    address = args.address or os.environ.get("RAY_DASHBOARD_ADDRESS") or state.get("dashboard")
    if not address:
        raise ConfigError("no running cluster here (`make run`); give --address http://HEAD:8265")
    token = os.environ.get("RAY_AUTH_TOKEN")
    token_path = os.environ.get("RAY_AUTH_TOKEN_PATH") or (
        state.get("token_path") if not args.address else None
    )
    if token is None and token_path and Path(token_path).exists():
        token = Path(token_path).read_text().strip()
    metrics = args.metrics or (state.get("metrics") if not args.address else None)
    return rollout.ServeAdmin(address, token, args.url, args.app), metrics
