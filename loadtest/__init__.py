"""Benchmark and load-test harness: floor (in-process), single-process FastAPI baseline, Ray Serve.

Not part of the product: nothing under serve_app/ imports from here. Entry point: `python -m
loadtest.bench` (`make bench`, `make bench-full`); `loadtest/locustfile.py` drives the same mix.
"""
