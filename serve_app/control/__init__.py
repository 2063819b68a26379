"""Operating a running service: one client of Serve's REST API (serve_api.py), rolling a bundle out
in place through a canary (rollout.py), retraining on the serving bundle's recipe (retrain.py), the
KubeRay manifest generated from the Serve config (kuberay.py) and the front door's policy and HAProxy
configuration (frontdoor.py).

May import: core. No ray: it talks to a cluster over HTTP, as an operator's laptop would.
"""
