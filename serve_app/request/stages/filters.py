"""Filters: each removes candidates for one reason and reports how many it removed.

Filters run on item rows of one bundle, before ranking (nothing they check depends on the ranker's
score), so the ranker never spends time on an item that cannot be shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from serve_app.core.artifacts import ItemSnapshot


@dataclass(frozen=True)
class FilterContext:
    user_id: int
    seen_rows: np.ndarray  # items the user already interacted with
    excluded_rows: np.ndarray  # the request's exclude_item_ids, as rows


class Filter(Protocol):
    name: str

    def removed(self, rows: np.ndarray, ctx: FilterContext) -> np.ndarray:
        """Boolean mask over `rows`: True where this filter removes the item."""
        ...


@dataclass(frozen=True)
class SeenFilter:
    name: str = "already_seen"

    def removed(self, rows: np.ndarray, ctx: FilterContext) -> np.ndarray:
        return np.isin(rows, ctx.seen_rows)


@dataclass(frozen=True)
class RequestExcludeFilter:
    name: str = "request_exclude"

    def removed(self, rows: np.ndarray, ctx: FilterContext) -> np.ndarray:
        return np.isin(rows, ctx.excluded_rows)


@dataclass(frozen=True)
class BlockedItemsFilter:
    """A business rule: item rows that must never be recommended (withdrawn, unlicensed, ...)."""

    blocked_rows: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    name: str = "blocked_items"

    def removed(self, rows: np.ndarray, ctx: FilterContext) -> np.ndarray:
        return np.isin(rows, self.blocked_rows)


def business_filters(items: ItemSnapshot, blocked_item_ids: Sequence[int]) -> tuple[Filter, ...]:
    """Every request's filters: already seen, the request's exclusions, and the blocked items."""
    blocked = items.rows_of(np.asarray(blocked_item_ids, dtype=np.int64))
    return (SeenFilter(), RequestExcludeFilter(), BlockedItemsFilter(blocked))


def apply_filters(
    filters: Sequence[Filter], rows: np.ndarray, ctx: FilterContext
) -> tuple[np.ndarray, dict[str, int]]:
    """Mask of rows to keep, and per filter the number of rows it (first) removed."""
    keep = np.ones(len(rows), dtype=bool)
    report: dict[str, int] = {}
    for f in filters:
        gone = f.removed(rows, ctx) & keep
        report[f.name] = int(gone.sum())
        keep &= ~gone
    return keep, report


def exclusion_budget(filters: Sequence[Filter], ctx: FilterContext) -> int:
    """How many extra candidates to fetch so filtering cannot leave fewer than asked for."""
    extra = len(ctx.seen_rows) + len(ctx.excluded_rows)
    for f in filters:
        extra += len(getattr(f, "blocked_rows", ()))
    return extra
