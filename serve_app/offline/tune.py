"""`recsys tune`: choose hyperparameters on the validation users, never on the test users.

Each candidate is a set of BuildConfig overrides; each runs the same strict protocol as a build (in a
scratch copy of the Feast repo, nothing published) and is scored on `valid_users`, which no build
trains on or reports. The defaults in serve_app/config.py come from this command (see their comments).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from serve_app.config import BuildConfig
from serve_app.offline.build import Timer, evaluate_on
from serve_app.offline.data import Interactions

REPO_FILES = ("definitions.py", "feature_store.yaml", ".feastignore")
# A small default grid around the defaults: retrieval model capacity, then ranker capacity.
DEFAULT_GRID: list[dict[str, Any]] = [
    {},
    {"embedding": {"factors": 32}},
    {"embedding": {"factors": 128}},
    {"embedding": {"regularization": 1.0}},
    {"embedding": {"alpha": 2.0}},
    {"ranker": {"max_depth": 5}},
    {"ranker": {"objective": "rank:ndcg"}},
    {"n_candidates": 400},
]


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = (
            merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def tune(
    data: Interactions, base: BuildConfig, grid: list[dict[str, Any]], repo: Path, progress: bool = True
) -> list[dict[str, Any]]:
    """Validation figures for each candidate, best two-stage NDCG@10 first."""
    results = []
    for overrides in grid:
        cfg = BuildConfig.model_validate(merged(base.model_dump(), overrides))
        with tempfile.TemporaryDirectory(prefix="recsys-tune-") as tmp:
            scratch = Path(tmp)
            for name in REPO_FILES:
                if (repo / name).exists():
                    shutil.copy(repo / name, scratch / name)
            done = evaluate_on(data, cfg, scratch, "valid", Timer(log=False), progress=False)
        m = done.evaluation["methods"]
        row = {
            "overrides": overrides,
            "n_users": done.evaluation["n_users"],
            **{name: m[name]["ndcg@10"] for name in m},
            "two_stage_ci95": m["two_stage"]["ndcg@10_ci95"],
        }
        results.append(row)
        if progress:
            print(_line(row), flush=True)
    return sorted(results, key=lambda r: -r["two_stage"])


def _line(row: dict[str, Any]) -> str:
    ci = row["two_stage_ci95"]
    return (
        f"two_stage {row['two_stage']:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]  retrieval_only "
        f"{row['retrieval_only']:.4f}  most_popular {row['most_popular']:.4f}  on {row['n_users']} "
        f"validation users  {row['overrides'] or '(defaults)'}"
    )


def format_results(results: list[dict[str, Any]]) -> str:
    return "\n".join(["Validation users, NDCG@10, best first:", *(_line(r) for r in results)])
