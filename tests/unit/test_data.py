"""load_movielens: every error names the file and the line; orphan and duplicate ratings are handled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serve_app.core.errors import DataError
from serve_app.offline.data import load_movielens

MOVIES = "movieId,title,genres\n1,Alpha,Drama|Comedy\n2,Beta,Comedy\n3,Gamma,(no genres listed)\n"
RATINGS_HEADER = "userId,movieId,rating,timestamp\n"


def write(directory: Path, ratings: str | None = None, movies: str | None = MOVIES) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if ratings is not None:
        (directory / "ratings.csv").write_text(ratings)
    if movies is not None:
        (directory / "movies.csv").write_text(movies)
    return directory


def good_ratings(*extra: str) -> str:
    rows = ["1,1,4.0,100", "1,2,3.5,200", "2,1,5.0,150", *extra]
    return RATINGS_HEADER + "\n".join(rows) + "\n"


def test_valid_directory_loads_typed_frames_sorted_by_time(tmp_path: Path) -> None:
    data = load_movielens(write(tmp_path, good_ratings()))
    assert list(data.ratings.columns) == ["user_id", "item_id", "rating", "ts"]
    assert data.ratings["ts"].tolist() == [100, 150, 200]
    assert data.ratings["rating"].dtype == np.float32
    assert data.categories == ("Comedy", "Drama")
    # First genre decides the category; "(no genres listed)" has none (-1).
    assert data.items.set_index("item_id")["category"].to_dict() == {1: 1, 2: 0, 3: -1}
    assert data.skipped == ()


@pytest.mark.parametrize("missing", ["ratings.csv", "movies.csv"])
def test_missing_file_is_named(tmp_path: Path, missing: str) -> None:
    write(tmp_path, good_ratings())
    (tmp_path / missing).unlink()
    with pytest.raises(DataError, match="file not found") as err:
        load_movielens(tmp_path)
    assert str(tmp_path / missing) in str(err.value)


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ("userId,movieId,rating,time", "unknown columns ['time']; missing columns ['timestamp']"),
        ("userId,movieId,rating", "missing columns ['timestamp']"),
        ("userId,movieId,rating,timestamp,tag", "unknown columns ['tag']"),
    ],
)
def test_bad_ratings_header_names_line_1(tmp_path: Path, header: str, fragment: str) -> None:
    write(tmp_path, header + "\n1,1,4.0,100\n")
    with pytest.raises(DataError) as err:
        load_movielens(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'ratings.csv'}:1: ")
    assert fragment in str(err.value)


def test_bad_movies_header_names_line_1(tmp_path: Path) -> None:
    write(tmp_path, good_ratings(), movies="movieId,name,genres\n1,A,Drama\n")
    with pytest.raises(DataError, match=r"unknown columns \['name'\]") as err:
        load_movielens(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'movies.csv'}:1: ")


@pytest.mark.parametrize(
    ("bad_row", "line", "fragment"),
    [
        ("3,2,great,300", 5, "rating is not a number: 'great'"),
        ("-7,2,4.0,300", 5, "userId must be a non-negative integer"),
        ("3,2.5,4.0,300", 5, "movieId must be a non-negative integer"),
        ("3,2,11,300", 5, "rating must be between 0 and 10"),
        ("3,2,4.0,", 5, "timestamp is not a number"),
    ],
)
def test_bad_rating_row_names_its_line(tmp_path: Path, bad_row: str, line: int, fragment: str) -> None:
    # Header is line 1, three good rows are lines 2-4, the bad row is line 5, one more good row follows.
    write(tmp_path, good_ratings(bad_row, "2,2,1.0,400"))
    with pytest.raises(DataError) as err:
        load_movielens(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'ratings.csv'}:{line}: ")
    assert fragment in str(err.value)


def test_first_of_many_bad_rows_is_named_deep_in_the_file(tmp_path: Path) -> None:
    rows = [f"{u},1,4.0,{u}" for u in range(1, 1_000)]
    rows[500] = "501,1,x,501"  # line 502
    rows[700] = "701,1,y,701"
    write(tmp_path, RATINGS_HEADER + "\n".join(rows) + "\n")
    with pytest.raises(
        DataError, match=r"ratings\.csv:502: rating is not a number: 'x' \(2 bad rows in all\)"
    ):
        load_movielens(tmp_path)


def test_line_number_counts_blank_lines(tmp_path: Path) -> None:
    write(tmp_path, RATINGS_HEADER + "1,1,4.0,100\n\n1,2,4.0,200\n2,1,x,300\n")  # bad row on line 5
    with pytest.raises(DataError, match=r"ratings\.csv:5: "):
        load_movielens(tmp_path)


def test_row_with_extra_field_names_the_file(tmp_path: Path) -> None:
    write(tmp_path, RATINGS_HEADER + "1,1,4.0,100\n1,2,4.0,200,9\n")
    with pytest.raises(DataError) as err:
        load_movielens(tmp_path)
    assert str(tmp_path / "ratings.csv") in str(err.value)
    assert "line 3" in str(err.value) or "ratings.csv:3" in str(err.value)


def test_duplicate_movie_id_names_the_second_occurrence(tmp_path: Path) -> None:
    write(tmp_path, good_ratings(), movies=MOVIES + "2,Beta again,Drama\n")
    with pytest.raises(DataError, match="movieId appears twice") as err:
        load_movielens(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'movies.csv'}:5: ")


def test_orphan_rating_is_skipped_and_reported_by_line(tmp_path: Path) -> None:
    write(tmp_path, good_ratings("3,99,4.0,300", "3,2,2.0,310"))
    data = load_movielens(tmp_path)
    assert len(data.skipped) == 1
    assert data.skipped[0].startswith(f"{tmp_path / 'ratings.csv'}:5: movieId 99 ")
    assert "movies.csv" in data.skipped[0] and "skipped" in data.skipped[0]
    assert 99 not in set(data.ratings["item_id"])
    assert len(data.ratings) == 4


def test_orphan_rating_is_an_error_when_strict(tmp_path: Path) -> None:
    write(tmp_path, good_ratings("3,99,4.0,300"))
    with pytest.raises(DataError, match=r"movieId is not in movies\.csv") as err:
        load_movielens(tmp_path, strict=True)
    assert str(err.value).startswith(f"{tmp_path / 'ratings.csv'}:5: ")


def test_duplicate_user_item_keeps_the_latest_rating(tmp_path: Path) -> None:
    # Out of time order on purpose: "latest" is by timestamp, not by position in the file.
    write(tmp_path, RATINGS_HEADER + "1,1,2.0,100\n1,1,4.5,300\n1,1,3.0,200\n1,2,1.0,50\n")
    ratings = load_movielens(tmp_path).ratings
    pair = ratings[(ratings["user_id"] == 1) & (ratings["item_id"] == 1)]
    assert len(pair) == 1
    assert pair["rating"].iat[0] == np.float32(4.5)
    assert pair["ts"].iat[0] == 300
    assert len(ratings) == 2


def test_header_only_ratings_file_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, RATINGS_HEADER)
    with pytest.raises(DataError, match="no rows after the header"):
        load_movielens(tmp_path)
