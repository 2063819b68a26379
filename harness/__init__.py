"""The local harness: clusters and services started on this machine for `make` and the tests. Not part
of the product: the wheel holds only serve_app.

    python -m harness start|stop   `make run` / `make stop` (__main__.py)
    ray_head.py     a Ray head as its own process, with its own token; a driver of one
    worker_node.py  a second Ray node (`make run NODES=2`)
    cluster.py      deploy, wait, and stop everything a cluster's state file records
    processes.py    process trees and groups, stopped roots first; what carries a cluster's mark
    ports.py        loopback ports, never the same one twice to one process
    door.py         HAProxy in front of the Ingress replicas, kept in step with Serve (a process)
    balancer.py     one round of it: the server slots, the coarse answer's list, the queue's length
    redis_server.py a redis-server, loaded with the Feast CLI
    prometheus.py   a Prometheus scraping a cluster, and queries to it
    audit.py        every socket a cluster listens on, called as a stranger would

May import: serve_app (any part), never loadtest.
"""
