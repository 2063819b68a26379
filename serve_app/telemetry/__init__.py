"""What the service measures about itself, as plain logic: the series' buckets and how a request is
counted (series.py), exposure and popularity bias of what is shown (exposure.py), online ANN recall
(recall_monitor.py) and sampled structured request logs (request_log.py).

May import: core, request. No ray: serve/metrics.py records the series through Ray Serve.
"""
