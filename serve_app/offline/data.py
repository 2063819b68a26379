"""Load an interaction log in MovieLens format, validating every row.

`ratings.csv` (userId,movieId,rating,timestamp) and `movies.csv` (movieId,title,genres) are the one
input format: MovieLens itself and the synthetic generator both produce it, so one loader serves both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from serve_app.core.errors import DataError

RATINGS_COLUMNS = ("userId", "movieId", "rating", "timestamp")
MOVIES_COLUMNS = ("movieId", "title", "genres")


@dataclass(frozen=True)
class Interactions:
    """The interaction log, sorted by time, with the item catalogue.

    ratings: user_id int64, item_id int64, rating float32, ts int64 (unix seconds).
    items: item_id int64, title str, category int64 (code of the first genre, -1 when none).
    """

    ratings: pd.DataFrame
    items: pd.DataFrame
    categories: tuple[str, ...]
    source: str
    skipped: tuple[str, ...] = ()


def _check_header(path: Path, expected: tuple[str, ...]) -> None:
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        header = fh.readline().strip().split(",")
    if tuple(header) != expected:
        unknown = [c for c in header if c not in expected]
        missing = [c for c in expected if c not in header]
        raise DataError(
            f"{path}:1: header is {','.join(header)!r}, expected {','.join(expected)!r}"
            + (f"; unknown columns {unknown}" if unknown else "")
            + (f"; missing columns {missing}" if missing else "")
        )


def _first_bad_line(path: Path, bad: np.ndarray, what: str, lines: np.ndarray) -> DataError:
    row = int(np.flatnonzero(bad)[0])
    return DataError(f"{path}:{lines[row]}: {what} ({int(bad.sum())} bad rows in all)")


def _read_rows(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """All fields as strings, blank lines dropped, and each row's line number in the file."""
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False, engine="c")
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: malformed CSV: {exc}") from exc
    # +2: one for the header, one because files count lines from 1 (blank lines were kept to count).
    lines = np.arange(len(raw)) + 2
    blank = (raw.fillna("") == "").all(axis=1).to_numpy()
    return raw[~blank].reset_index(drop=True), lines[~blank]


def _read_ratings(path: Path) -> pd.DataFrame:
    _check_header(path, RATINGS_COLUMNS)
    raw, lines = _read_rows(path)
    parsed = {c: pd.to_numeric(raw[c], errors="coerce") for c in RATINGS_COLUMNS}
    for col in RATINGS_COLUMNS:
        bad = parsed[col].isna().to_numpy()
        if bad.any():
            first = raw[col].iloc[np.flatnonzero(bad)[0]]
            raise _first_bad_line(path, bad, f"{col} is not a number: {first!r}", lines)
    for col in ("userId", "movieId", "timestamp"):
        values = parsed[col].to_numpy()
        bad = (values != np.floor(values)) | (values < 0)
        if bad.any():
            raise _first_bad_line(path, bad, f"{col} must be a non-negative integer", lines)
    rating = parsed["rating"].to_numpy()
    bad = (rating < 0) | (rating > 10)
    if bad.any():
        raise _first_bad_line(path, bad, "rating must be between 0 and 10", lines)
    if len(raw) == 0:
        raise DataError(f"{path}: no rows after the header")
    frame = pd.DataFrame(
        {
            "user_id": parsed["userId"].astype(np.int64),
            "item_id": parsed["movieId"].astype(np.int64),
            "rating": parsed["rating"].astype(np.float32),
            "ts": parsed["timestamp"].astype(np.int64),
            "line": lines,
        }
    )
    return frame


def read_movies(path: Path) -> tuple[pd.DataFrame, tuple[str, ...]]:
    _check_header(path, MOVIES_COLUMNS)
    raw, lines = _read_rows(path)
    ids = pd.to_numeric(raw["movieId"], errors="coerce")
    bad = ids.isna().to_numpy()
    if bad.any():
        first = raw["movieId"].iloc[np.flatnonzero(bad)[0]]
        raise _first_bad_line(path, bad, f"movieId is not a number: {first!r}", lines)
    dup = ids.duplicated().to_numpy()
    if dup.any():
        raise _first_bad_line(path, dup, "movieId appears twice", lines)
    first_genre = raw["genres"].str.split("|", n=1).str[0]
    first_genre = first_genre.where(first_genre != "(no genres listed)", "")
    categories = tuple(sorted(g for g in first_genre.unique() if g))
    code = {g: i for i, g in enumerate(categories)}
    items = pd.DataFrame(
        {
            "item_id": ids.astype(np.int64),
            "title": raw["title"],
            "category": first_genre.map(lambda g: code.get(g, -1)).astype(np.int64),
        }
    )
    return items, categories


def load_movielens(directory: str | Path, strict: bool = False) -> Interactions:
    """Read and validate `ratings.csv` and `movies.csv` from `directory`.

    Malformed rows are always an error. A rating of an item missing from movies.csv cannot be served
    (there is nothing to show), so it is skipped and reported by line, or an error when `strict`.
    """
    directory = Path(directory)
    ratings_path, movies_path = directory / "ratings.csv", directory / "movies.csv"
    for path in (ratings_path, movies_path):
        if not path.is_file():
            raise DataError(
                f"{path}: file not found (a MovieLens-format directory needs ratings.csv and movies.csv)"
            )
    ratings = _read_ratings(ratings_path)
    items, categories = read_movies(movies_path)
    unknown = ~ratings["item_id"].isin(items["item_id"]).to_numpy()
    skipped: tuple[str, ...] = ()
    if unknown.any():
        if strict:
            raise _first_bad_line(
                ratings_path, unknown, "movieId is not in movies.csv", ratings["line"].to_numpy()
            )
        skipped = tuple(
            f"{ratings_path}:{line}: movieId {item} not in movies.csv; row skipped"
            for line, item in zip(ratings["line"][unknown], ratings["item_id"][unknown], strict=True)
        )
        ratings = ratings[~unknown]
    ratings = ratings.drop(columns="line")
    # A user rating the same item twice keeps the latest rating: one interaction per (user, item).
    ratings = ratings.sort_values("ts", kind="stable").drop_duplicates(["user_id", "item_id"], keep="last")
    ratings = ratings.reset_index(drop=True)
    return Interactions(
        ratings=ratings, items=items, categories=categories, source=str(directory.resolve()), skipped=skipped
    )
