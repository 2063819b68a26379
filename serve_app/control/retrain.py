"""`recsys retrain` (`make retrain`): the serving bundle's recipe again, on its data source plus every
event logged since, then a canary of the new bundle when a service runs (no ray import).

Same recipe: the build config is the one in the serving bundle's manifest, and the data is the
directory it was built from (or the same synthetic spec), so what changes is only what happened since:
`recsys build` reads the event log (docs/architecture.md, "Events and freshness"). Scheduled with
cron (docs/ops.md, "Retrain").
"""

from __future__ import annotations

import json
from pathlib import Path

from serve_app.core.errors import ConfigError

SYNTH_FLAGS = {
    "items": "--items",
    "users": "--users",
    "mean_interactions": "--mean-interactions",
    "clusters": "--clusters",
    "weeks": "--weeks",
    "seed": "--seed",
}


def data_args(source: str, data: str | None = None) -> list[str]:
    """`recsys build` flags for the same data as a manifest's `data_source.path` (or `data` if given)."""
    if data:
        return ["--data", data]
    if source.startswith("synthetic "):
        flags = []
        for pair in source.removeprefix("synthetic ").split():
            key, _, value = pair.partition("=")
            if key not in SYNTH_FLAGS:
                raise ConfigError(
                    f"the serving bundle's synthetic spec has an unknown key {key!r}: give --data"
                )
            flags += [SYNTH_FLAGS[key], value]
        return flags
    if Path(source).is_dir():
        return ["--data", source]
    raise ConfigError(f"the serving bundle was built from {source!r}, which is not here: give --data DIR")


def build_args(manifest: dict, repo: str, artifacts: str, config_path: Path, data: str | None) -> list[str]:
    """`recsys build` arguments that repeat the bundle's recipe; writes its build config to config_path."""
    config_path.write_text(json.dumps(manifest["build_config"]))
    source = manifest["data_source"]["path"]
    return [
        "build",
        "--repo",
        repo,
        "--artifacts",
        artifacts,
        "--config",
        str(config_path),
        *data_args(source, data),
    ]
