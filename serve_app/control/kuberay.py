"""A KubeRay RayService manifest generated from cluster/serve_config.yaml, so the two cannot drift.

    python -m serve_app.control.kuberay [--serve-config cluster/serve_config.yaml]
                                [--out cluster/kuberay/rayservice.yaml] [--check]

`spec.serveConfigV2` is the Serve config's applications with the few changes a pod needs (KUBERNETES
below); the pod sizes and the worker group's bounds are computed from the deployments' `num_cpus` and
replica bounds. `--check` fails when the committed file is not what this would write. No `import ray`:
this runs in CI and on an ops laptop, and the tests validate the result against the RayService CRD.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from serve_app.core.paths import NODE_ENV

NAME = "recsys"
# Must match the Ray in the image (pyproject pins ray 2.60.x; a test checks it). KubeRay refuses token
# auth below Ray 2.52.0 and reads this to decide.
RAY_VERSION = "2.60.0"
# Placeholder: an image built from this repo's pyproject (FROM rayproject/ray:2.60.0-py311, then
# `pip install .` and the bundle + Feast registry copied under RECSYS_HOME). Override with --image.
IMAGE = f"recsys-serve:{RAY_VERSION}-py311"
RECSYS_HOME = "/home/ray/recsys"
SERVE_PORT = 8000
HEALTH_PATH = "/healthz"
REDIS_SECRET, REDIS_KEY = "recsys-redis", "connection-string"
# What differs in a pod (the tests undo exactly these and compare with the Serve config):
KUBERNETES = {
    # The local config binds 127.0.0.1 because there the host is shared; a pod has its own network
    # namespace and is reached only through the Service KubeRay puts in front of the proxies, and a
    # proxy bound to loopback would be unreachable from that Service.
    "host": "0.0.0.0",
    # A proxy on every node that holds a replica: the serve Service spreads traffic over them instead
    # of funnelling it through the head, and KubeRay's worker readiness expects a proxy on workers.
    "proxy_location": "EveryNode",
    # Replicas on many pods need one shared online store (REDIS_CONNECTION_STRING from a Secret).
    "feature_store_yaml": "feature_repo/feature_store.redis.yaml",
}

# Sizing, from docs/measurements/2026-11-30-bench.md (default catalogue): the graph's process tree holds
# 3.2-3.4 GiB idle, about 1 GiB of it the dashboard, so one of its 3 replicas takes under 0.6 GiB; 0.75
# leaves room for request-time allocations. The 1M catalogue's index is larger: raise it (or set
# ray_actor_options.memory, which wins) before deploying that.
REPLICA_MEMORY_GIB = Fraction(3, 4)
WORKER_CPUS = 1  # Ray CPUs a worker pod offers replicas (rayStartParams num-cpus: `ray start` takes an int)
NODE_CPU = Fraction(1, 2)  # raylet, agents and the node's Serve proxy: real CPU outside the logical ones
NODE_MEMORY_GIB = Fraction(1)
CPU_HEADROOM = Fraction(5, 4)  # fractional replicas do not pack pods exactly: 25 % more pods at most
# The head runs no replicas (num-cpus 0), but GCS, the dashboard, the Serve controller, its proxy and
# the task that imports and builds the app at each deploy (a zero-CPU task, so it may land here), which
# loads the bundle once.
HEAD_CPU = Fraction(1)
HEAD_MEMORY_GIB = Fraction(2) + REPLICA_MEMORY_GIB


@dataclass(frozen=True)
class Demand:
    """One deployment's replicas: what each asks of Ray, and how many there can be."""

    name: str
    num_cpus: Fraction
    memory_gib: Fraction
    min_replicas: int
    max_replicas: int


@dataclass(frozen=True)
class Sizing:
    min_workers: int
    max_workers: int
    worker_cpu: Fraction
    worker_memory_gib: Fraction


def demands(serve_config: dict[str, Any]) -> list[Demand]:
    """Every deployment of every application; explicit bounds only, as a deployment's code may differ."""
    out = []
    for app in serve_config["applications"]:
        for d in app.get("deployments", []):
            where = f"{app['name']}/{d['name']}"
            opts = d.get("ray_actor_options", {})
            if "num_cpus" not in opts or not opts["num_cpus"] > 0:
                raise ValueError(f"{where}: give ray_actor_options.num_cpus > 0 to size the pods")
            scaling = d.get("autoscaling_config")
            if scaling:
                lo, hi = scaling["min_replicas"], scaling["max_replicas"]
            elif isinstance(d.get("num_replicas"), int):
                lo = hi = d["num_replicas"]
            else:
                raise ValueError(f"{where}: give num_replicas or autoscaling_config bounds to size the pods")
            memory = Fraction(opts["memory"], 2**30) if "memory" in opts else REPLICA_MEMORY_GIB
            out.append(Demand(where, Fraction(str(opts["num_cpus"])), memory, lo, hi))
    return out


def sizing(ds: list[Demand]) -> Sizing:
    if any(d.num_cpus > WORKER_CPUS for d in ds):
        raise ValueError(f"a replica asks for more than a worker pod's {WORKER_CPUS} CPUs")
    at_min = sum((d.num_cpus * d.min_replicas for d in ds), Fraction(0))
    at_max = sum((d.num_cpus * d.max_replicas for d in ds), Fraction(0))
    min_workers = math.ceil(at_min / WORKER_CPUS)
    # Memory for the most replicas one pod can hold: the cheapest in CPU (then the largest) first, until
    # the pod is full.
    replicas = sorted(
        ((d.num_cpus, d.memory_gib) for d in ds for _ in range(d.max_replicas)), key=lambda r: (r[0], -r[1])
    )
    used, memory = Fraction(0), NODE_MEMORY_GIB
    for cpus, gib in replicas:
        if used + cpus > WORKER_CPUS:
            break
        used, memory = used + cpus, memory + gib
    return Sizing(
        min_workers=min_workers,
        max_workers=max(min_workers, math.ceil(at_max * CPU_HEADROOM / WORKER_CPUS)),
        worker_cpu=WORKER_CPUS + NODE_CPU,
        worker_memory_gib=memory,
    )


def serve_config_v2(serve_config: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(serve_config)
    config["proxy_location"] = KUBERNETES["proxy_location"]
    config.setdefault("http_options", {})["host"] = KUBERNETES["host"]
    for app in config["applications"]:
        app.setdefault("args", {})["feature_store_yaml"] = KUBERNETES["feature_store_yaml"]
    return config


def _resources(cpu: Fraction, memory_gib: Fraction) -> dict[str, dict[str, str]]:
    # requests == limits: the scheduler reserves what Ray will use, and a pod is never throttled below it.
    quantity = {"cpu": f"{math.ceil(cpu * 1000)}m", "memory": f"{math.ceil(memory_gib * 1024)}Mi"}
    return {"requests": quantity, "limits": dict(quantity)}


def _container(name: str, image: str, resources: dict[str, Any], ports: dict[str, int]) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "env": [
            {"name": "RECSYS_HOME", "value": RECSYS_HOME},  # the app args' relative paths resolve here
            {
                "name": "REDIS_CONNECTION_STRING",  # e.g. "recsys-redis:6379,password=...": a secret
                "valueFrom": {"secretKeyRef": {"name": REDIS_SECRET, "key": REDIS_KEY}},
            },
            *({"name": k, "value": v} for k, v in NODE_ENV.items()),  # what every node starts with
        ],
        "ports": [{"name": n, "containerPort": p} for n, p in ports.items()],
        "resources": resources,
    }


def manifest(serve_config: dict[str, Any], image: str = IMAGE) -> dict[str, Any]:
    size = sizing(demands(serve_config))
    head = _container(
        "ray-head",
        image,
        _resources(HEAD_CPU, HEAD_MEMORY_GIB),
        {"gcs-server": 6379, "dashboard": 8265, "client": 10001, "serve": SERVE_PORT},
    )
    worker = _container(
        "ray-worker", image, _resources(size.worker_cpu, size.worker_memory_gib), {"serve": SERVE_PORT}
    )
    # Readiness on the app's /healthz goes on the workers, where KubeRay keeps a probe the user gives
    # (it injects its own only when none is set) and uses it to admit the pod to the serve Service. Not
    # on the head: KubeRay deploys serveConfigV2 only once the head pod is Ready, so a head waiting for
    # the app would wait forever; the operator checks the head's proxy itself before routing to it.
    # Liveness stays KubeRay's (raylet and GCS health), so a dead raylet still restarts the pod.
    # /healthz also answers 503 when the ingress queue is full: 30 s of failures, not one burst, takes
    # a pod out of the Service.
    worker["readinessProbe"] = {
        "httpGet": {"path": HEALTH_PATH, "port": SERVE_PORT},
        "periodSeconds": 10,
        "timeoutSeconds": 5,
        "failureThreshold": 3,
    }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": NAME},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config_v2(serve_config), sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                # KubeRay >= 1.5.1 makes a random token Secret per RayCluster, sets RAY_AUTH_MODE and
                # RAY_AUTH_TOKEN on every Ray container and sends the token to the dashboard when it
                # deploys serveConfigV2. Setting those env vars by hand instead would lock the operator
                # itself out of the dashboard (it sends a token only when authOptions asks for one).
                "authOptions": {"mode": "token"},
                "enableInTreeAutoscaling": True,
                "headGroupSpec": {
                    "rayStartParams": {"num-cpus": "0"},  # replicas go to workers; the head runs Ray
                    "template": {"spec": {"containers": [head]}},
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "serve",
                        "replicas": size.min_workers,
                        "minReplicas": size.min_workers,
                        "maxReplicas": size.max_workers,
                        "rayStartParams": {"num-cpus": str(WORKER_CPUS)},
                        "template": {"spec": {"containers": [worker]}},
                    }
                ],
            },
        },
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2) as literal blocks, so the embedded config stays readable."""


_Dumper.add_representer(
    str,
    lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None),
)


def render(serve_config: dict[str, Any], source: str, image: str = IMAGE) -> str:
    """The manifest file: a header saying where it comes from and what differs, then the YAML."""
    size = sizing(demands(serve_config))
    k8s = KUBERNETES
    header = f"""\
# Generated by `python -m serve_app.control.kuberay` from {source}: do not edit by hand;
# `python -m serve_app.control.kuberay --check` (run by the tests) fails when this file is stale.
# serveConfigV2 is that config with, for Kubernetes: http_options.host {k8s["host"]} (a pod is
# reached only through its Service), proxy_location {k8s["proxy_location"]}, and
# args.feature_store_yaml {k8s["feature_store_yaml"]} (REDIS_CONNECTION_STRING from Secret
# {REDIS_SECRET}). Token auth: authOptions.mode token (KubeRay >= 1.5.1 makes the token Secret).
# Workers: {size.min_workers} to {size.max_workers} pods of {WORKER_CPUS} Ray CPU, \
sized at {float(REPLICA_MEMORY_GIB):g} GiB a replica.
# Readiness on {HEALTH_PATH} is the workers' probe. Apply after creating Secret {REDIS_SECRET}: docs/ops.md.
"""
    body = yaml.dump(manifest(serve_config, image), Dumper=_Dumper, sort_keys=False, width=110)
    return header + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serve_app.control.kuberay", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--serve-config", type=Path, default=Path("cluster/serve_config.yaml"))
    parser.add_argument("--out", type=Path, default=Path("cluster/kuberay/rayservice.yaml"))
    parser.add_argument("--image", default=IMAGE, help="the image built from this repo: %(default)s")
    parser.add_argument("--check", action="store_true", help="fail if --out is not what would be written")
    args = parser.parse_args(argv)
    text = render(yaml.safe_load(args.serve_config.read_text()), args.serve_config.as_posix(), args.image)
    if args.check:
        current = args.out.read_text() if args.out.exists() else None
        if current != text:
            print(
                f"{args.out} is out of date with {args.serve_config}: regenerate it with "
                f"`python -m serve_app.control.kuberay --serve-config {args.serve_config} --out {args.out}`",
                file=sys.stderr,
            )
            return 1
        print(f"{args.out} is up to date with {args.serve_config}")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
