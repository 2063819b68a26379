"""Metrics on the temporal holdout, their 95% bootstrap intervals, exposure measures, and the table.

Accuracy: NDCG@10 and recall@10/50, per user, averaged over seeds per user, then over users; the
intervals resample users (the unit that varies), 2,000 times, percentile method. Beyond accuracy, over
every evaluated user's top 10: catalogue coverage, the mean popularity percentile of what is shown (as
popular as things were at each decision time), the share of the top 1% most popular items, and the
Gini of exposure across the catalogue (0: every item shown equally, 1: one item shown to everyone).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from serve_app.telemetry.exposure import gini

KS = (10, 50)
ACCURACY = ("ndcg@10", "recall@10", "recall@50")
EXPOSURE = ("coverage@10", "popularity_pct@10", "top1pct_share@10", "gini@10")
N_BOOTSTRAP = 2_000


def recall_at(recommended: np.ndarray, relevant: set[int], k: int) -> float:
    """Fraction of the user's held-out items found in the top k."""
    if not relevant:
        return 0.0
    return len(relevant.intersection(recommended[:k].tolist())) / len(relevant)


def ndcg_at(recommended: np.ndarray, relevant: set[int], k: int) -> float:
    """Binary-relevance NDCG@k; the ideal list puts min(|relevant|, k) hits first."""
    if not relevant:
        return 0.0
    gains = np.array([1.0 if i in relevant else 0.0 for i in recommended[:k].tolist()])
    discounts = 1.0 / np.log2(np.arange(2, len(gains) + 2))
    ideal = (1.0 / np.log2(np.arange(2, min(len(relevant), k) + 2))).sum()
    return float((gains * discounts).sum() / ideal)


def per_user(lists: Sequence[np.ndarray], relevant: Sequence[set[int]]) -> dict[str, np.ndarray]:
    """Each accuracy metric for each user, aligned with `lists`."""
    out = {"ndcg@10": np.array([ndcg_at(r, s, 10) for r, s in zip(lists, relevant, strict=True)])}
    for k in KS:
        out[f"recall@{k}"] = np.array([recall_at(r, s, k) for r, s in zip(lists, relevant, strict=True)])
    return out


def bootstrap_indices(n_users: int, seed: int = 0) -> np.ndarray:
    """One (N_BOOTSTRAP, n_users) resampling shared by every method, so differences are paired."""
    return np.random.default_rng(seed).integers(0, n_users, size=(N_BOOTSTRAP, n_users))


def interval(values: np.ndarray, idx: np.ndarray) -> list[float]:
    means = values[idx].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def ratio_interval(num: np.ndarray, den: np.ndarray, idx: np.ndarray) -> list[float]:
    ratios = num[idx].mean(axis=1) / np.maximum(den[idx].mean(axis=1), 1e-12)
    return [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))]


def exposure(
    lists: Sequence[np.ndarray], percentiles: Sequence[np.ndarray], n_catalogue: int, k: int = 10
) -> dict[str, float]:
    """Exposure measures over the top k of every list; `percentiles[u]` align with lists[u][:k]."""
    top = [np.asarray(r[:k]) for r in lists]
    shown = np.concatenate(top) if top else np.empty(0, np.int64)
    pct = np.concatenate([np.asarray(p[:k]) for p in percentiles]) if percentiles else np.empty(0)
    _, counts = np.unique(shown, return_counts=True)
    full = np.zeros(max(n_catalogue, len(counts)))
    full[: len(counts)] = counts
    return {
        "coverage@10": len(counts) / max(n_catalogue, 1),
        "popularity_pct@10": float(pct.mean()) if len(pct) else 0.0,
        "top1pct_share@10": float((pct >= 0.99).mean()) if len(pct) else 0.0,
        "gini@10": gini(full),
    }


def _cell(m: dict, name: str) -> str:
    ci = m.get(f"{name}_ci95")
    return f"{m[name]:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def format_table(evaluation: dict) -> str:
    methods = evaluation["methods"]
    lines = [
        f"Strict evaluation, {evaluation['protocol']} temporal holdout: {evaluation['n_users']} test users, "
        f"mean of {len(evaluation['seeds'])} seeds {evaluation['seeds']}, 95% bootstrap intervals over users",
        f"{'method':<16}{'ndcg@10':>26}{'recall@10':>26}{'recall@50':>26}"
        f"{'cov@10':>8}{'pop%':>7}{'top1%':>7}{'gini':>7}",
    ]
    for name, m in methods.items():
        lines.append(
            f"{name:<16}{_cell(m, 'ndcg@10'):>26}{_cell(m, 'recall@10'):>26}{_cell(m, 'recall@50'):>26}"
            f"{m['coverage@10']:>8.4f}{m['popularity_pct@10']:>7.3f}{m['top1pct_share@10']:>7.3f}"
            f"{m['gini@10']:>7.3f}"
        )
    for name, c in evaluation.get("comparisons", {}).items():
        lines.append(f"{name}: {c['mean']:.4f} [{c['ci95'][0]:.4f}, {c['ci95'][1]:.4f}]")
    if "fallback_users" in evaluation:
        lines.append(
            f"{evaluation['fallback_users']} test users had no usable history at their decision time and "
            "were served the popularity list by every method, as the service would"
        )
    idx = evaluation.get("index")
    if idx:
        lines.append(
            f"index {idx['kind']}: recall@{idx['n']} vs exact = {idx['recall_vs_exact']:.4f} "
            f"on {idx['n_queries']} users"
        )
    times = ", ".join(f"{k} {v:.1f}s" for k, v in evaluation.get("timings_s", {}).items())
    if times:
        lines.append(f"build times: {times}")
    return "\n".join(lines)
