"""`recsys rollout`'s command line: each step printed (the steps are serve_app/control/rollout.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import httpx

from serve_app.cli.service import connect
from serve_app.control import rollout
from serve_app.core.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rollout",
        help="a new bundle to the running service: canary to a share of users, then --promote or --rollback",
    )
    p.add_argument("bundle", nargs="?", help="the new bundle's directory (to start a canary, or with --now)")
    p.add_argument("--share", type=float, default=0.1, help="share of users the canary serves (0-1]")
    step = p.add_mutually_exclusive_group()
    step.add_argument("--promote", action="store_true", help="the canary's bundle serves everyone")
    step.add_argument("--rollback", action="store_true", help="everyone back on the main bundle")
    step.add_argument("--status", action="store_true", help="what serves where; requests per arm")
    step.add_argument("--now", action="store_true", help="BUNDLE serves everyone at once (no canary)")
    step.add_argument(
        "--replay",
        metavar="RATINGS_CSV",
        help="a held-out log (MovieLens ratings.csv shape): each user's top --k, hit rate per arm",
    )
    p.add_argument("--k", type=int, default=10, help="answer size for --replay")
    p.add_argument("--max-users", type=int, default=2_000, help="users --replay asks for at most")
    p.add_argument("--address", help="Ray dashboard URL (default: the cluster `make run` started here)")
    p.add_argument("--url", help="the service's HTTP address (default: from Serve's http_options)")
    p.add_argument("--metrics", help="a Prometheus text endpoint with the recsys metrics (for --status)")
    p.add_argument("--app", default="recsys")
    p.add_argument("--timeout", type=float, default=300, help="seconds for every replica to take a step")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    admin, metrics = connect(args)
    serving = admin.serving()
    if args.status:
        _print_status(serving, metrics)
        return
    if args.replay:
        _replay(admin, serving, Path(args.replay), args.k, args.max_users)
        return
    if args.promote or args.rollback:
        if serving.canary is None or serving.canary_path is None:
            raise ConfigError(f"no canary in progress (serving {serving.main} to everyone)")
        target_path, target = (
            (serving.canary_path, serving.canary) if args.promote else (serving.main_path, serving.main)
        )
        app = rollout.single_config(admin.app_config(admin.details()), target_path, same_main=args.rollback)
        rollout.apply(admin, app, target, None, args.timeout)
        _follow_current(Path(target_path))
        print(f"{'promoted' if args.promote else 'rolled back'}: {target} serves everyone ({target_path})")
        return
    if not args.bundle:
        raise ConfigError("name the new bundle's directory (or --status, --promote, --rollback)")
    if not 0 < args.share <= 1:
        raise ConfigError(f"--share {args.share}: give a share of users in (0, 1]")
    path = Path(args.bundle).resolve()
    old, new = rollout.check_new_bundle(path, serving.main_path)
    print(f"checked {path}: it loads and verifies as a replica would\n")
    print(rollout.evaluation_table(old, new), "\n")
    if new["version"] == serving.main:
        raise ConfigError(f"{new['version']} is the bundle serving already")
    if serving.canary is not None and serving.canary != new["version"]:
        raise ConfigError(f"a canary of {serving.canary} is in progress: --promote or --rollback it first")
    app = admin.app_config(admin.details())
    if args.now:
        rollout.apply(admin, rollout.single_config(app, str(path)), new["version"], None, args.timeout)
        _follow_current(path)
        print(f"switched: {new['version']} serves everyone (was {serving.main}: {serving.main_path})")
        return
    canary = rollout.canary_config(app, serving.main_path, str(path), args.share)
    rollout.apply(admin, canary, serving.main, new["version"], args.timeout)
    print(
        f"canary: {new['version']} serves {args.share:.0%} of users (by a hash of their id), "
        f"{serving.main} the rest.\nWatch: recsys rollout --status (ray_recsys_requests_total by arm); "
        "then recsys rollout --promote, or --rollback"
    )


def _print_status(serving: rollout.Serving, metrics: str | None) -> None:
    print(f"main:   {serving.main} ({serving.main_path}) on {json.dumps(serving.stages)}")
    if serving.canary:
        print(f"canary: {serving.canary} ({serving.canary_path}) for {serving.share:.0%} of users")
        print(f"        on {json.dumps(serving.canary_stages)}")
    if serving.refused:
        print(f"refused: {json.dumps(serving.refused)}")
    if metrics:
        counts = rollout.arm_counts(httpx.get(metrics, timeout=10).text)
        for arm, outcomes in sorted(counts.items()):
            total = sum(outcomes.values())
            shown = ", ".join(f"{o or 'ok'} {v:.0f}" for o, v in sorted(outcomes.items()))
            print(f"requests since the replicas started, {arm}: {total:.0f} ({shown})")


def _replay(admin: rollout.ServeAdmin, serving: rollout.Serving, log: Path, k: int, max_users: int) -> None:
    """Each user of a held-out log asks for their top k as any client would; the answer's version
    says which arm served it, and a hit is one of the user's held-out items in it."""
    import pandas as pd

    ratings = pd.read_csv(log, usecols=["userId", "movieId"])
    held_out = ratings.groupby("userId")["movieId"].apply(lambda s: {int(i) for i in s})
    users = sorted(held_out.index)[:max_users]
    answers = []
    with httpx.Client(base_url=admin.url, timeout=30) as client:
        for user in users:
            body = client.post("/recommend", json={"user_id": int(user), "k": k}).json()
            arm = "canary" if serving.canary and body["bundle_version"] == serving.canary else "main"
            answers.append((arm, [i["item_id"] for i in body["items"]], held_out[user]))
    for arm, tally in sorted(rollout.hit_rates(answers).items()):
        low, high = tally["ci95"]
        print(
            f"{arm}: hit rate@{k} {tally['hit_rate']:.3f} [{low:.3f}, {high:.3f}] "
            f"({tally['hits']} of {tally['users']} users of {log.name})"
        )


def _follow_current(bundle: Path) -> None:
    """`current` follows what serves everyone, when the bundle was published in an artifacts
    directory here (so `make run` or a redeploy of `bundle: artifacts/current` serves it too)."""
    from serve_app.core.bundle import artifacts_of, point_current

    artifacts = artifacts_of(bundle)
    if artifacts is not None and (artifacts / "current").is_symlink():
        point_current(artifacts, bundle.resolve())
