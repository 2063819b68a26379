"""The shared core: what every other part of the product builds on, and which imports none of them.

Settings (strict pydantic models of what a deployment may be told), errors classified by who is at
fault, paths (the checkout, RECSYS_HOME), the one feature transformation shared by training and
serving (features.py) and the raw feature rows both compute from an interaction log (feature_rows.py),
the ALS fold-in, and the artifacts: the item index, snapshot and histories, the bundle that holds them
together with its checks, and the item delta that extends one bundle.

May import: nothing of serve_app (numpy, pandas, FAISS, XGBoost, pydantic). No ray.
"""
