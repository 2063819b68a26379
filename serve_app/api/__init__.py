"""The HTTP contract: what a client may send to /recommend and what it gets back, errors in one JSON
shape that says what to fix, request ids and the body-size limit (docs/architecture.md, "The HTTP
contract"). Used by the Serve ingress and by the single-process baseline alike.

May import: core, request. No ray.
"""
