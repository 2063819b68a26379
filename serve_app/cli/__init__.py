"""`recsys`, the command line: main.py assembles a module per command group (offline, events,
rollout, items, retrain); service.py finds the running service.

May import: core, events, offline, control. No ray.
"""
