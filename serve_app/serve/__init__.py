"""The Ray Serve layer: the only code that imports ray. Thin: each deployment holds a `ServingState`
and calls the request path's logic.

app.py is the Ingress (FastAPI in Serve: validation, request ids, the flow, answers) and `build_app`,
which wires the colocated or graph topology; deployments.py the Retriever, Ranker and EventWriter;
coalesce.py batches the graph's stage calls at the ingress; metrics.py records the series through
Ray Serve's metrics API (docs/architecture.md).

May import: core, request, api, events, telemetry.
"""
