"""`recsys tune`: choose hyperparameters on users the report never sees, never on the test users.

Each candidate is a set of BuildConfig overrides; each runs the same strict protocol as a build (in a
scratch copy of the Feast repo, nothing published). With `folds` > 1 (the default) it is scored by
cross-validation over the ranker and validation users together: each fold's users are scored by rankers
trained on the other folds, so every non-test user is scored once. ml-latest-small has 122 validation
users, too few on their own: the ranker's gain over retrieval-only moved between -0.008 and +0.026
from one third of the non-test users to another (5 shuffles x 3 folds). The defaults in
serve_app/core/settings.py come from this command.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from serve_app.offline.build import Evaluated, Timer, evaluate_on
from serve_app.offline.config import BuildConfig
from serve_app.offline.data import Interactions
from serve_app.offline.evaluation import protocol
from serve_app.offline.evaluation.split import TemporalSplit

REPO_FILES = ("definitions.py", "feature_store.yaml", ".feastignore")
# A small default grid around the defaults: retrieval model capacity, then ranker capacity.
DEFAULT_GRID: list[dict[str, Any]] = [
    {},
    {"embedding": {"factors": 32}},
    {"embedding": {"factors": 128}},
    {"embedding": {"regularization": 1.0}},
    {"embedding": {"alpha": 1.0}},
    {"ranker": {"max_depth": 5}},
    {"ranker": {"objective": "rank:ndcg"}},
    {"n_candidates": 400},
]
GAIN = "two_stage - retrieval_only, ndcg@10"


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = (
            merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def cv_folds(split: TemporalSplit, folds: int, seed: int) -> list[TemporalSplit]:
    """The split with ranker and validation users redrawn `folds` times from the non-test users:
    each non-test user is a validation user in exactly one fold; test users stay where they were."""
    pool = np.sort(np.concatenate([split.ranker_users, split.valid_users]))
    shuffled = np.random.default_rng(seed).permutation(pool)
    out = []
    for k in range(folds):
        held = np.sort(shuffled[k::folds])
        out.append(dataclasses.replace(split, ranker_users=np.setdiff1d(pool, held), valid_users=held))
    return out


def _scores(done: Evaluated, cfg: BuildConfig, folds: int, n_catalogue: int) -> dict[str, Any]:
    evaluations = (
        [done.evaluation]
        if folds == 1
        else [
            protocol.evaluate(s, done.runs, cfg, "valid", n_catalogue)[0]
            for s in cv_folds(done.split, folds, cfg.seed)
        ]
    )
    n = np.array([e["n_users"] for e in evaluations], dtype=np.float64)
    w = n / n.sum()
    row: dict[str, Any] = {"n_users": int(n.sum())}
    for method in protocol.METHODS:
        row[method] = float(w @ [e["methods"][method]["ndcg@10"] for e in evaluations])
    row["gain"] = float(w @ [e["comparisons"][GAIN]["mean"] for e in evaluations])
    row["fold_gains"] = [round(e["comparisons"][GAIN]["mean"], 4) for e in evaluations]
    return row


def tune(
    data: Interactions,
    base: BuildConfig,
    grid: list[dict[str, Any]],
    repo: Path,
    folds: int = 3,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Cross-validated (or, folds=1, validation-user) figures for each candidate, best first."""
    results = []
    for overrides in grid:
        cfg = BuildConfig.model_validate(merged(base.model_dump(), overrides))
        with tempfile.TemporaryDirectory(prefix="recsys-tune-") as tmp:
            scratch = Path(tmp)
            for name in REPO_FILES:
                if (repo / name).exists():
                    shutil.copy(repo / name, scratch / name)
            done = evaluate_on(data, cfg, scratch, "valid", Timer(log=False), progress=False)
        row = {"overrides": overrides, **_scores(done, cfg, folds, len(data.items))}
        results.append(row)
        if progress:
            print(_line(row), flush=True)
    return sorted(results, key=lambda r: -r["two_stage"])


def _line(row: dict[str, Any]) -> str:
    return (
        f"two_stage {row['two_stage']:.4f}  retrieval_only {row['retrieval_only']:.4f}  most_popular "
        f"{row['most_popular']:.4f}  gain {row['gain']:+.4f} (folds {row['fold_gains']})  on "
        f"{row['n_users']} users  {row['overrides'] or '(defaults)'}"
    )


def format_results(results: list[dict[str, Any]]) -> str:
    return "\n".join(["NDCG@10 on users never reported on, best first:", *(_line(r) for r in results)])
