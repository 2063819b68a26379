"""Ranking metrics on the temporal holdout, and the table the build prints and the manifest keeps."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

KS = (10, 50)


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


def evaluate_lists(lists: Iterable[np.ndarray], relevant: Sequence[set[int]]) -> dict[str, float]:
    recalls: dict[int, list[float]] = {k: [] for k in KS}
    ndcgs: list[float] = []
    for rec, rel in zip(lists, relevant, strict=True):
        for k in KS:
            recalls[k].append(recall_at(rec, rel, k))
        ndcgs.append(ndcg_at(rec, rel, 10))
    out = {f"recall@{k}": float(np.mean(v)) for k, v in recalls.items()}
    out["ndcg@10"] = float(np.mean(ndcgs))
    return out


def format_table(evaluation: dict) -> str:
    methods = evaluation["methods"]
    lines = [
        f"Evaluation on the temporal holdout ({evaluation['n_eval_users']} users, "
        f"last {evaluation['holdout_fraction']:.0%} of each user's interactions)",
        f"{'method':<22}{'ndcg@10':>10}{'recall@10':>11}{'recall@50':>11}",
    ]
    for name, m in methods.items():
        lines.append(f"{name:<22}{m['ndcg@10']:>10.4f}{m['recall@10']:>11.4f}{m['recall@50']:>11.4f}")
    idx = evaluation["index"]
    lines.append(
        f"index {idx['kind']}: recall@{idx['n']} vs exact = {idx['recall_vs_exact']:.4f} "
        f"on {idx['n_queries']} held-out users"
    )
    times = ", ".join(f"{k} {v:.1f}s" for k, v in evaluation["timings_s"].items())
    lines.append(f"build times: {times}")
    return "\n".join(lines)
