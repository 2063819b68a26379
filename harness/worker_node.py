"""A second Ray node on this machine (`make run NODES=2`): the stage replicas run there, the rest on the head.

The worker is its own `ray start --address=<head's GCS> --block`, in a session of its own, so its
process group (the `ray start`, its raylet, agents and every replica the raylet starts) is recorded in
the head's state file by pid: `kill` SIGKILLs exactly that group (a lost node), `restart` starts it
again with the same options, and `cluster.stop` ends it with the head. It joins with the head's
token (`RAY_AUTH_TOKEN_PATH`), binds 127.0.0.1 and carries the label `recsys-node=stages`; the head
carries `recsys-node=head`. `place` writes the Serve config with a `label_selector` on every
deployment (Serve 2.60's `RayActorOptionsSchema.label_selector`, enforced both by Serve's deployment
scheduler and by Ray's): Retriever and Ranker on the worker, the Ingress on the head, where the proxy
is (`proxy_location: HeadOnly`). Labels rather than a custom resource: a selector says where, not how
much, and Ray recommends labels over resources for that.

Both nodes read the same RECSYS_HOME, so the bundle and the Feast repo are one shared path here; on
machines of their own the nodes need that path on a shared filesystem, or an image carrying them
(docs/ops.md, "Two nodes on one machine").
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import yaml

from harness.ports import free_ports
from harness.processes import process_group
from harness.ray_head import BIN, ROOT, cluster_env, renice_node, serve_api

LABEL = "recsys-node"
HEAD_LABELS = {LABEL: "head"}
WORKER_LABELS = {LABEL: "stages"}
STAGES = ("Retriever", "Ranker")  # the deployments the worker node runs


def label_arg(labels: dict[str, str]) -> str:
    """`ray start --labels` takes key=value pairs (its JSON form is deprecated)."""
    return "--labels=" + ",".join(f"{k}={v}" for k, v in labels.items())


def start_worker(
    state: dict,
    state_file: Path,
    num_cpus: int = 2,
    env: dict[str, str] | None = None,
    timeout_s: float = 120,
) -> dict:
    """Join a worker node to the head in `state`; returns its record (pid = process group, node id).

    `env` must be what the head got (RECSYS_HOME, say): replicas inherit it from the raylet that starts
    them, and the worker's raylet has only what its `ray start` had.
    """
    env = dict(env or {})
    if state.get("throughput_optimized"):
        env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    log_path = state_file.parent / "ray-worker.log"
    # A restarted worker is a new node; the lost one may stay listed ALIVE until the GCS notices.
    known = {n["node_id"] for n in serve_api(state).nodes()}
    agent_port, metrics_port = free_ports(2)
    with log_path.open("a") as log:
        proc = subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                f"--address={state['gcs']}",
                "--block",
                "--node-ip-address=127.0.0.1",
                f"--num-cpus={num_cpus}",
                label_arg(WORKER_LABELS),
                # Not the default agent port (52365): another node on this machine may hold it.
                f"--dashboard-agent-listen-port={agent_port}",
                f"--metrics-export-port={metrics_port}",
                "--disable-usage-stats",
                f"--temp-dir={state['temp_dir']}-w",  # its own logs and sockets, next to the head's
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=cluster_env(env, state["token_path"], state_file),
            start_new_session=True,  # its own process group: what `kill` and `stop` end
            cwd=ROOT,
        )
    worker = {"pid": proc.pid, "num_cpus": num_cpus, "env": env, "log": str(log_path), "node_id": None}
    state["worker"] = worker
    state_file.write_text(json.dumps(state))  # recorded before the wait, so `stop` ends it if that fails
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker's ray start exited with {proc.returncode}; see {log_path}")
        joined = [
            n
            for n in serve_api(state).nodes()
            if n["node_id"] not in known
            and n["state"] == "ALIVE"
            and n.get("labels", {}).get(LABEL) == WORKER_LABELS[LABEL]
        ]
        if joined:
            renice_node(proc.pid)
            worker["node_id"] = joined[0]["node_id"]
            state_file.write_text(json.dumps(state))
            return worker
        time.sleep(1)
    raise RuntimeError(f"the worker node did not join within {timeout_s:.0f} s; see {log_path}")


def place(config: Path, out: Path) -> Path:
    """The Serve config with the stages pinned to the worker node and the rest to the head."""
    data = yaml.safe_load(config.read_text())
    names = set()
    for app in data["applications"]:
        for d in app.get("deployments", []):
            names.add(d["name"])
            labels = WORKER_LABELS if d["name"] in STAGES else HEAD_LABELS
            d.setdefault("ray_actor_options", {})["label_selector"] = dict(labels)
    if not names & set(STAGES):
        raise ValueError(f"{config} has no {'/'.join(STAGES)} deployment to run on the worker node")
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def processes(state: dict) -> list[psutil.Process]:
    """Every process of the worker node: its process group (`ray start`, the raylet, the agents) and
    what those started (Ray puts each worker process, a replica say, in a process group of its own)."""
    return process_group(state.get("worker", {}).get("pid"))


def kill(state: dict) -> int:
    """SIGKILL every process of the worker node at once (the machine lost, not a graceful leave): the
    process group, then the replicas, which would otherwise outlive their raylet for a moment and
    could still answer calls made to them directly. Returns how many processes there were."""
    victims = processes(state)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(state["worker"]["pid"], signal.SIGKILL)
    for p in victims:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(victims, timeout=10)
    return len(victims)


def restart(state: dict, state_file: Path, timeout_s: float = 120) -> dict:
    """Start the worker again with the options it first had; it joins as a new node."""
    old = state["worker"]
    if processes(state):
        raise RuntimeError(f"the worker node (process group {old['pid']}) is still running")
    return start_worker(state, state_file, old["num_cpus"], old["env"], timeout_s)
