"""The strict evaluation: every figure for a held-out decision comes from data before it.

split.py chooses decision times and the three user groups; snapshots.py trains retrieval models on
data before each decision; protocol.py runs most-popular, retrieval-only and two-stage on the same
users; popularity.py is the baseline as it was at each decision; metrics.py scores the lists with 95%
intervals; tune.py chooses hyperparameters on non-test users (docs/offline.md, "Evaluation").

May import: core, request, telemetry, and offline's own modules.
"""
