"""`recsys`: the offline path from the command line (data, build, tune, evaluate, verify), and
`recsys events FILE` to send events to a running service, `recsys rollout` to roll a new bundle out to it."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from serve_app.errors import ConfigError, RecsysError

DEFAULT_REPO = Path("feature_repo")
DEFAULT_ARTIFACTS = Path("artifacts")
# The embedded default: small enough to build in well under a minute, big enough to learn from.
DEFAULT_SYNTH = {"items": 5_000, "users": 2_000}


def _synth_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--items", type=int, default=DEFAULT_SYNTH["items"])
    p.add_argument("--users", type=int, default=DEFAULT_SYNTH["users"])
    p.add_argument("--mean-interactions", type=float, default=40.0)
    p.add_argument("--clusters", type=int, default=20)
    p.add_argument("--weeks", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)


def _spec(args: argparse.Namespace):
    from serve_app.offline.synth import SynthSpec

    return SynthSpec(
        n_items=args.items,
        n_users=args.users,
        mean_interactions=args.mean_interactions,
        n_clusters=args.clusters,
        weeks=args.weeks,
        seed=args.seed,
    )


def cmd_synth(args: argparse.Namespace) -> None:
    from serve_app.offline.synth import generate, write_movielens

    ratings, movies = generate(_spec(args))
    out = write_movielens(ratings, movies, args.out)
    print(f"wrote {len(ratings):,} interactions, {len(movies):,} items to {out}/ratings.csv and movies.csv")


def cmd_build(args: argparse.Namespace) -> None:
    from serve_app.config import BuildConfig
    from serve_app.offline.data import load_movielens

    try:
        from serve_app.offline.build import build
    except ImportError as exc:  # the lean serving install has no training stack
        raise ConfigError(
            f"building needs the training stack ({exc.name} is missing): pip install 'recsys-serve[offline]'"
        ) from exc

    cfg = (
        BuildConfig.model_validate(json.loads(Path(args.config).read_text()))
        if args.config
        else BuildConfig()
    )
    if args.data:
        data = load_movielens(args.data, strict=args.strict)
    else:
        from serve_app.offline.synth import generate, write_movielens

        # Synthesised data goes through the same CSV loader as any dataset: one path, one set of checks.
        with tempfile.TemporaryDirectory() as tmp:
            write_movielens(*generate(_spec(args)), tmp)
            data = load_movielens(tmp, strict=True)
            data = type(data)(data.ratings, data.items, data.categories, f"synthetic {vars_of(args)}")
    for line in data.skipped[:10]:
        print(f"warning: {line}", file=sys.stderr)
    if len(data.skipped) > 10:
        print(f"warning: ... {len(data.skipped) - 10} more rows skipped", file=sys.stderr)
    path, _ = build(
        data, cfg, Path(args.repo).resolve(), Path(args.artifacts).resolve(), progress=not args.quiet
    )
    print(f"bundle {path.name} published at {path} (current -> {path.name})")


def cmd_tune(args: argparse.Namespace) -> None:
    from serve_app.config import BuildConfig
    from serve_app.offline.data import load_movielens
    from serve_app.offline.tune import DEFAULT_GRID, format_results, tune

    base = (
        BuildConfig.model_validate(json.loads(Path(args.config).read_text()))
        if args.config
        else BuildConfig()
    )
    grid = json.loads(Path(args.grid).read_text()) if args.grid else DEFAULT_GRID
    if not isinstance(grid, list) or not all(isinstance(g, dict) for g in grid):
        raise ConfigError(f"{args.grid}: expected a JSON list of BuildConfig override objects")
    if args.folds < 1:
        raise ConfigError(f"--folds {args.folds}: use 1 (validation users only) or more")
    data = load_movielens(args.data, strict=args.strict)
    results = tune(data, base, grid, Path(args.repo).resolve(), folds=args.folds)
    print(format_results(results))


def vars_of(args: argparse.Namespace) -> str:
    return (
        f"items={args.items} users={args.users} mean_interactions={args.mean_interactions} "
        f"clusters={args.clusters} weeks={args.weeks} seed={args.seed}"
    )


def _bundle_path(args: argparse.Namespace) -> Path:
    from serve_app.bundle import resolve_current

    return Path(args.bundle) if args.bundle else resolve_current(Path(args.artifacts))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from serve_app.offline.evaluation import format_table

    manifest = json.loads((_bundle_path(args) / "manifest.json").read_text())
    print(f"bundle {manifest['version']} (data: {manifest['data_source']['path']})")
    print(format_table(manifest["evaluation"]))


def cmd_verify(args: argparse.Namespace) -> None:
    from serve_app.bundle import load_bundle

    bundle = load_bundle(_bundle_path(args))
    print(
        f"bundle {bundle.version} OK: {len(bundle.items.item_ids):,} items, dim {bundle.embedding_dim}, "
        f"index {bundle.manifest['index']['kind']}"
    )


def cmd_events(args: argparse.Namespace) -> None:
    from serve_app.event_client import read_events, send_events

    events = read_events(args.file)
    sent = send_events(args.url, events, batch=args.batch)
    print(
        f"{len(events):,} events sent to {args.url}/events in {sent.requests} requests: "
        f"{sent.accepted:,} accepted, {sent.duplicates:,} duplicates (already applied)"
    )


def cmd_retrain(args: argparse.Namespace) -> None:
    import httpx

    from serve_app import retrain, rollout_cli
    from serve_app.bundle import point_current, resolve_current

    artifacts = Path(args.artifacts)
    try:  # the recipe of the bundle that serves, when a service runs here (`current` may differ)
        admin, _ = rollout_cli.connect(
            argparse.Namespace(address=args.address, url=None, metrics=None, app="recsys")
        )
        serving: Path | None = Path(admin.serving().main_path)
    except (RecsysError, OSError, httpx.HTTPError):
        serving = None
    source = serving or resolve_current(artifacts)
    manifest = json.loads((source / "manifest.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        argv = retrain.build_args(manifest, args.repo, args.artifacts, Path(tmp) / "config.json", args.data)
        print(f"retraining {manifest['version']}'s recipe: recsys {' '.join(argv)}")
        build_args = parser().parse_args([*argv, *(["--quiet"] if args.quiet else [])])
        build_args.func(build_args)
    new = resolve_current(artifacts)
    if serving is not None and serving.parent.parent.resolve() == artifacts.resolve():
        point_current(artifacts, serving)  # `current` is what serves until a promote moves it
        print(f"artifacts/current stays on {serving.name}, the serving bundle, until --promote")
    if args.share <= 0 or serving is None:
        print(f"to roll it out: recsys rollout {new} --share 0.1")
        return
    rollout_args = parser().parse_args(
        [
            "rollout",
            str(new),
            "--share",
            str(args.share),
            *(["--address", args.address] if args.address else []),
        ]
    )
    try:
        rollout_cli.run(rollout_args)
    except (RecsysError, OSError, httpx.HTTPError) as exc:
        print(f"not rolled out ({exc}); when a service runs: recsys rollout {new} --share {args.share}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recsys", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="write an interaction log in MovieLens format")
    data_sub = data.add_subparsers(dest="source", required=True)
    synth = data_sub.add_parser(
        "synth", help="seeded synthetic data with taste clusters and power-law popularity"
    )
    _synth_args(synth)
    synth.add_argument("--out", required=True)
    synth.set_defaults(func=cmd_synth)

    build = sub.add_parser("build", help="data -> feast apply/materialize -> train -> evaluate -> bundle")
    build.add_argument(
        "--data",
        help="directory with MovieLens-format ratings.csv and movies.csv "
        "(default: synthetic data from the flags below)",
    )
    build.add_argument(
        "--strict", action="store_true", help="fail on ratings of items missing from movies.csv"
    )
    build.add_argument("--config", help="JSON file with BuildConfig overrides (serve_app/config.py)")
    build.add_argument("--repo", default=os.environ.get("RECSYS_FEATURE_REPO", str(DEFAULT_REPO)))
    build.add_argument("--artifacts", default=os.environ.get("RECSYS_ARTIFACTS", str(DEFAULT_ARTIFACTS)))
    build.add_argument("--quiet", action="store_true")
    _synth_args(build)
    build.set_defaults(func=cmd_build)

    tune = sub.add_parser(
        "tune", help="score BuildConfig candidates on the validation users (never the test users)"
    )
    tune.add_argument("--data", required=True, help="MovieLens-format directory")
    tune.add_argument("--strict", action="store_true")
    tune.add_argument("--config", help="JSON file with the base BuildConfig overrides")
    tune.add_argument("--grid", help="JSON list of override objects to try (default: a small built-in grid)")
    tune.add_argument(
        "--folds",
        type=int,
        default=3,
        help="cross-validation folds over the ranker and validation users (1: the validation users only)",
    )
    tune.add_argument("--repo", default=os.environ.get("RECSYS_FEATURE_REPO", str(DEFAULT_REPO)))
    tune.set_defaults(func=cmd_tune)

    events = sub.add_parser("events", help="send a JSON or JSONL file of events to a running service")
    events.add_argument("file", help='JSONL (one event per line), or JSON: a list or {"events": [...]}')
    events.add_argument("--url", default=os.environ.get("RECSYS_URL", "http://127.0.0.1:8000"))
    events.add_argument("--batch", type=int, default=1_000, help="events per request (1-1000)")
    events.set_defaults(func=cmd_events)

    from serve_app import items_cli, rollout_cli

    rollout_cli.add_parser(sub)
    items_cli.add_parser(
        sub,
        {
            "repo": os.environ.get("RECSYS_FEATURE_REPO", str(DEFAULT_REPO)),
            "artifacts": os.environ.get("RECSYS_ARTIFACTS", str(DEFAULT_ARTIFACTS)),
        },
    )

    retrain = sub.add_parser(
        "retrain",
        help="the serving bundle's recipe again on its data plus the events since, then a canary of it",
    )
    retrain.add_argument("--data", help="MovieLens-format directory (default: the one it was built from)")
    retrain.add_argument(
        "--share", type=float, default=0.1, help="canary share when a service runs (0: none)"
    )
    retrain.add_argument("--address", help="Ray dashboard URL (default: the cluster `make run` started here)")
    retrain.add_argument("--repo", default=os.environ.get("RECSYS_FEATURE_REPO", str(DEFAULT_REPO)))
    retrain.add_argument("--artifacts", default=os.environ.get("RECSYS_ARTIFACTS", str(DEFAULT_ARTIFACTS)))
    retrain.add_argument("--quiet", action="store_true")
    retrain.set_defaults(func=cmd_retrain)

    for name, func, text in (
        ("evaluate", cmd_evaluate, "print a bundle's evaluation table"),
        ("verify", cmd_verify, "load and check a bundle as the server would"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("bundle", nargs="?", help="bundle directory (default: the current one)")
        sp.add_argument("--artifacts", default=os.environ.get("RECSYS_ARTIFACTS", str(DEFAULT_ARTIFACTS)))
        sp.set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except RecsysError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
