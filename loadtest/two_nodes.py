"""The worker node lost under load, and back: what losing the node that runs the stages costs requests.

    python -m loadtest.two_nodes       # 20 req/s for 60 s, the worker lost 5 s in and back 20 s later
    python -m loadtest.two_nodes --rate 15 --window 40 --kill-at 3 --restart-after 5

A head and a worker node started as `make run NODES=2` starts them (harness/worker_node.py: Retriever
and Ranker on the worker, the Ingress and the proxy on the head), open-loop load at `--rate` for
`--window` seconds (loadtest.chaos's harness); `--kill-at` seconds in, every process of the worker node
is SIGKILLed at once (a machine lost), and `--restart-after` seconds later the worker is started again
with the same options (it joins as a new node). Reports requests failed and degraded, p99 and max
latency from the scheduled send time, the time from the kill to the last degraded answer, when the GCS
declared the lost node dead, and the nodes the stage replicas ran on before and after. Writes
<out>/<timestamp>/{two_nodes.json,two_nodes.md} and copies them to <out>/latest/.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

from loadtest import chaos
from loadtest.client import LoadClient

ROOT = Path(__file__).resolve().parents[1]


def _stages_on(state: dict, node_id: str, timeout_s: float) -> dict[str, list[str]]:
    """Serve's replica placement once every stage has a RUNNING replica and all of them run on
    `node_id` (or the last placement seen when `timeout_s` runs out)."""
    from harness import ray_head, worker_node

    deadline = time.monotonic() + timeout_s
    while True:
        placed = ray_head.serve_api(state).replica_nodes()
        stages = [placed.get(s, []) for s in worker_node.STAGES]
        if (all(stages) and {n for s in stages for n in s} == {node_id}) or time.monotonic() > deadline:
            return placed
        time.sleep(1)


def run(opts: argparse.Namespace) -> dict[str, Any]:
    from harness import audit, ray_head, worker_node
    from loadtest.stats import machine
    from loadtest.targets import run_inputs, served_target

    bundle, repo, config, work, payloads = run_inputs(opts, 20_000)
    report: dict[str, Any] = {"machine": machine(), "config": str(config), **vars(opts)}
    report.update({k: str(v) for k, v in vars(opts).items() if isinstance(v, Path)})
    with served_target(bundle, repo, work, config, nodes=2) as (port, procs, info), LoadClient(2) as client:
        state_file = work / "ray" / "cluster.json"
        state = json.loads(state_file.read_text())
        lost = state["worker"]["node_id"]
        report.update(startup_s=info["startup_s"], head_node=None, lost_node=lost, head_pid=state["pid"])
        report["worker_pgids"] = [state["worker"]["pid"]]  # the lost node's, then the restarted one's
        report["before"] = ray_head.serve_api(state).replica_nodes()
        # The worker's sockets, called as a stranger would (no token): it must refuse like the head.
        report["worker_sockets"] = [
            [s.process, s.port, kind] for s, kind, _ in audit.audit(state["worker"]["pid"])
        ]
        times: dict[str, float] = {}
        errors: list[BaseException] = []

        def restart_later() -> None:
            time.sleep(max(0.0, times["killed"] + opts.restart_after - time.time()))
            times["restart"] = time.time()
            try:
                worker_node.restart(state, state_file)
            except BaseException as e:  # re-raised in the caller's thread
                errors.append(e)
            times["rejoined"] = time.time()

        restarter = threading.Thread(target=restart_later, daemon=True)

        def inject() -> str:
            times["killed"] = time.time()
            n = worker_node.kill(state)
            restarter.start()
            return f"SIGKILL of the worker node's {n} processes; restarted {opts.restart_after:g} s later"

        load = argparse.Namespace(rate=opts.rate, window=opts.window, kill_at=opts.kill_at)
        outcome = chaos.Chaos(client, port, procs, payloads, load).run("worker_node", inject)
        restarter.join()
        if errors:
            raise errors[0]
        ready_again_s = chaos.wait_recovered(port, bundle)
        new = state["worker"]["node_id"]
        report["worker_pgids"].append(state["worker"]["pid"])
        report["after"] = _stages_on(state, new, timeout_s=60)
        by_id = {n["node_id"]: n for n in ray_head.serve_api(state).nodes()}
        report["head_node"] = next(i for i, n in by_id.items() if n.get("is_head_node"))
        end_ms = by_id.get(lost, {}).get("end_time_ms")
        report.update(
            outcome=outcome.__dict__,
            new_node=new,
            lost_node_state=by_id.get(lost, {}).get("state"),
            lost_node_dead_after_s=round(end_ms / 1000 - times["killed"], 1) if end_ms else None,
            restarted_after_s=round(times["restart"] - times["killed"], 1),
            rejoined_after_s=round(times["rejoined"] - times["killed"], 1),
            ready_again_after_window_s=round(ready_again_s, 1),
        )
    return report


def markdown(report: dict[str, Any]) -> str:
    o = report["outcome"]
    row = chaos.Outcome(**{k: v for k, v in o.items() if k in chaos.Outcome.__dataclass_fields__}).row()
    r = report
    lines = [
        f"# Worker node lost under load ({r['config']})",
        "",
        f"Open-loop load at {r['rate']:g} req/s for {r['window']:g} s; the worker node (Retriever and "
        f"Ranker) SIGKILLed {r['kill_at']:g} s in and started again {r['restarted_after_s']:g} s later "
        f"(joined {r['rejoined_after_s']:g} s after the kill); the GCS declared the lost node "
        f"{r['lost_node_state']} {r['lost_node_dead_after_s']} s after the kill.",
        "",
        "| fault | requests | failed | degraded | p99 ms | max ms | last bad request after | note |",
        "|---|---|---|---|---|---|---|---|",
        row,
        "",
        f"Stage replicas before: {_placement(r, 'before')}; after: {_placement(r, 'after')}. "
        f"Ranked answers again {r['ready_again_after_window_s']:g} s after the window closed.",
    ]
    return "\n".join(lines) + "\n"


def _placement(report: dict[str, Any], key: str) -> str:
    names = {
        report["head_node"]: "head",
        report["lost_node"]: "lost worker",
        report["new_node"]: "new worker",
    }
    return ", ".join(
        f"{d} on {'/'.join(names.get(n, n[:8]) for n in nodes) or 'none'}" for d, nodes in report[key].items()
    )


def main(argv: list[str] | None = None) -> int:
    from loadtest.targets import add_target_args

    parser = argparse.ArgumentParser(prog="python -m loadtest.two_nodes", description=__doc__.split("\n")[0])
    add_target_args(parser, direct=False)
    parser.add_argument("--rate", type=float, default=20.0, help="req/s, open loop")
    parser.add_argument("--window", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--kill-at", type=float, default=5.0, help="seconds into the window")
    parser.add_argument("--restart-after", type=float, default=20.0, help="seconds after the kill")
    parser.add_argument("--out", type=Path, default=ROOT / "loadtest" / "reports" / "two_nodes")
    opts = parser.parse_args(argv)
    report = run(opts)
    chaos.write_report(opts.out, "two_nodes", report, markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
