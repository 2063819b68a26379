"""Events and freshness: POST /events applied all-or-nothing (models.py, log.py, ingest.py), a user's
online row recomputed after events by the build's own functions (user_rows.py), new items served
without a rebuild (new_items.py), and how every ingress hears whose features changed (push_feed.py).

May import: core. No ray: the EventWriter deployment (serve/deployments.py) wraps it.
"""
