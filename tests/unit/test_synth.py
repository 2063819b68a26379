"""The synthetic generator: seeded, power-law popular, clustered tastes, validated flags, atomic files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serve_app.core.errors import DataError
from serve_app.offline.data import load_movielens
from serve_app.offline.synth import SynthSpec, generate, write_movielens

SPEC = SynthSpec(n_items=2_000, n_users=500, seed=1)


@pytest.fixture(scope="module")
def frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    return generate(SPEC)


def test_same_seed_gives_identical_frames(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    ratings, movies = generate(SPEC)
    pd.testing.assert_frame_equal(ratings, frames[0])
    pd.testing.assert_frame_equal(movies, frames[1])


def test_different_seed_gives_different_ratings(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    other, _ = generate(SynthSpec(n_items=2_000, n_users=500, seed=2))
    assert not other.equals(frames[0])


def test_frames_are_in_movielens_layout(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    ratings, movies = frames
    assert list(ratings.columns) == ["userId", "movieId", "rating", "timestamp"]
    assert list(movies.columns) == ["movieId", "title", "genres"]
    assert len(movies) == SPEC.n_items
    assert ratings["movieId"].isin(movies["movieId"]).all()
    assert not ratings.duplicated(["userId", "movieId"]).any()
    assert ratings["rating"].between(0.5, 5.0).all()


def test_popularity_is_power_law(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    ratings, movies = frames
    counts = ratings["movieId"].value_counts()
    top_share = counts.iloc[: len(movies) // 100].sum() / len(ratings)
    # Uniform popularity would give the top 1% of items about 1% of interactions.
    assert top_share > 0.05


def _top3_cluster_share(cluster: pd.Series, user: pd.Series) -> pd.Series:
    frame = pd.DataFrame({"user": user.to_numpy(), "cluster": cluster.to_numpy()})
    return frame.groupby("user")["cluster"].apply(lambda c: c.value_counts(normalize=True).iloc[:3].sum())


def test_users_concentrate_on_few_clusters(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    ratings, movies = frames
    active = ratings.groupby("userId").filter(lambda g: len(g) >= 20)
    cluster = movies.set_index("movieId")["genres"].reindex(active["movieId"])
    share = _top3_cluster_share(cluster, active["userId"])
    shuffled = pd.Series(np.random.default_rng(0).permutation(cluster.to_numpy()))
    baseline = _top3_cluster_share(shuffled, active["userId"])
    assert len(share) > 50
    assert share.mean() > 0.6
    assert share.mean() > baseline.mean() + 0.25


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        ({"n_items": 99}, "--items"),
        ({"n_items": 5_000_001}, "--items"),
        ({"n_users": 9}, "--users"),
        ({"n_clusters": 1}, "--clusters"),
        ({"n_items": 100, "n_clusters": 21}, "--clusters"),
        ({"weeks": 1}, "--weeks"),
        ({"mean_interactions": 4.9}, "--mean-interactions"),
    ],
)
def test_validate_rejects_out_of_range_flags(overrides: dict, flag: str) -> None:
    spec = SynthSpec(**overrides)
    with pytest.raises(DataError, match=flag):
        spec.validate()
    with pytest.raises(DataError, match=flag):
        generate(spec)


def test_validate_accepts_the_boundaries() -> None:
    SynthSpec(n_items=100, n_users=10, n_clusters=20, weeks=2, mean_interactions=5).validate()


def test_write_movielens_leaves_only_the_two_files(tmp_path: Path) -> None:
    ratings, movies = generate(SynthSpec(n_items=200, n_users=30, seed=4))
    out = write_movielens(ratings, movies, tmp_path / "data")
    write_movielens(ratings, movies, out)  # overwriting is fine too
    assert sorted(p.name for p in out.iterdir()) == ["movies.csv", "ratings.csv"]
    loaded = load_movielens(out, strict=True)
    assert len(loaded.ratings) == len(ratings)
    assert len(loaded.items) == len(movies)


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("cannot format")


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    ratings, movies = generate(SynthSpec(n_items=200, n_users=30, seed=4))
    out = write_movielens(ratings, movies, tmp_path)
    before = (out / "ratings.csv").read_bytes()
    broken = ratings.astype({"rating": object})
    broken.loc[0, "rating"] = _Unprintable()
    with pytest.raises(RuntimeError, match="cannot format"):
        write_movielens(broken, movies, out)
    assert sorted(p.name for p in out.iterdir()) == ["movies.csv", "ratings.csv"]
    assert (out / "ratings.csv").read_bytes() == before
