"""The request path: from a user id to a ranked answer, with its deadlines and fallbacks.

serving_state.py holds what a replica serves (bundles, filters, settings; a canary's beside them),
flow.py runs user features + retrieval -> ranking under one deadline and settles fallbacks,
brownout.py answers cheaper past in-flight thresholds, deadlines.py carries a request's deadline into
coalesced stage calls, canary.py decides a user's arm. stages/ holds each stage's logic. The same code
runs in a Serve replica, the single-process baseline and the benchmark's floor
(docs/architecture.md, "The request path").

May import: core. No ray: the Serve layer (serve/) wraps this.
"""
