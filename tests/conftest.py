"""Shared fixtures: real Feast repos on SQLite in temp dirs, and one real small build per session."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MOVIELENS = ROOT.parent / "shared" / "datasets" / "ml-latest-small"

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("FEAST_DISABLE_USAGE", "1")


def copy_feature_repo(dest: Path) -> Path:
    """A fresh copy of feature_repo/ (definitions and yaml, no data) at dest."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("definitions.py", "feature_store.yaml", "feature_store.redis.yaml", ".feastignore"):
        shutil.copy(ROOT / "feature_repo" / name, dest / name)
    return dest


@pytest.fixture
def feature_repo(tmp_path: Path) -> Path:
    return copy_feature_repo(tmp_path / "feature_repo")


@pytest.fixture(scope="session")
def movielens_dir() -> Path:
    if not (MOVIELENS / "ratings.csv").is_file():
        pytest.skip(f"{MOVIELENS} is absent (it is only in the development checkout, never bundled)")
    return MOVIELENS


@dataclass(frozen=True)
class Built:
    repo: Path
    artifacts: Path
    bundle: Path
    data_dir: Path


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """One real build (synthetic data, Feast on SQLite, ALS, FAISS, XGBoost) shared by the session."""
    from serve_app.config import BuildConfig
    from serve_app.offline.data import load_movielens
    from serve_app.offline.pipeline import build
    from serve_app.offline.synth import SynthSpec, generate, write_movielens

    base = tmp_path_factory.mktemp("built")
    data_dir = write_movielens(*generate(SynthSpec(n_items=1_000, n_users=400, seed=3)), base / "data")
    repo = copy_feature_repo(base / "feature_repo")
    artifacts = base / "artifacts"
    path, _ = build(load_movielens(data_dir), BuildConfig(), repo, artifacts, progress=False)
    return Built(repo=repo, artifacts=artifacts, bundle=path, data_dir=data_dir)
