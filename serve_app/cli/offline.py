"""`recsys data synth`, `build`, `tune`, `evaluate`, `verify`: the offline path from the command line.

Each command imports its part of the training stack when it runs, so `recsys --help` and the
serving-only install (without the `offline` extra) stay light.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from serve_app.core.errors import ConfigError

DEFAULT_REPO = Path("feature_repo")
DEFAULT_ARTIFACTS = Path("artifacts")
# The embedded default: small enough to build in well under a minute, big enough to learn from.
DEFAULT_SYNTH = {"items": 5_000, "users": 2_000}


def default_repo() -> str:
    return os.environ.get("RECSYS_FEATURE_REPO", str(DEFAULT_REPO))


def default_artifacts() -> str:
    return os.environ.get("RECSYS_ARTIFACTS", str(DEFAULT_ARTIFACTS))


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
    from serve_app.offline.config import BuildConfig
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
    from serve_app.offline.config import BuildConfig
    from serve_app.offline.data import load_movielens
    from serve_app.offline.evaluation.tune import DEFAULT_GRID, format_results, tune

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
    from serve_app.core.bundle import resolve_current

    return Path(args.bundle) if args.bundle else resolve_current(Path(args.artifacts))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from serve_app.offline.evaluation.metrics import format_table

    manifest = json.loads((_bundle_path(args) / "manifest.json").read_text())
    print(f"bundle {manifest['version']} (data: {manifest['data_source']['path']})")
    print(format_table(manifest["evaluation"]))


def cmd_verify(args: argparse.Namespace) -> None:
    from serve_app.core.bundle import load_bundle

    bundle = load_bundle(_bundle_path(args))
    print(
        f"bundle {bundle.version} OK: {len(bundle.items.item_ids):,} items, dim {bundle.embedding_dim}, "
        f"index {bundle.manifest['index']['kind']}"
    )


def add_build(sub: argparse._SubParsersAction) -> None:
    build = sub.add_parser("build", help="data -> feast apply/materialize -> train -> evaluate -> bundle")
    build.add_argument(
        "--data",
        help="directory with MovieLens-format ratings.csv and movies.csv "
        "(default: synthetic data from the flags below)",
    )
    build.add_argument(
        "--strict", action="store_true", help="fail on ratings of items missing from movies.csv"
    )
    build.add_argument("--config", help="JSON file with BuildConfig overrides (serve_app/offline/config.py)")
    build.add_argument("--repo", default=default_repo())
    build.add_argument("--artifacts", default=default_artifacts())
    build.add_argument("--quiet", action="store_true")
    _synth_args(build)
    build.set_defaults(func=cmd_build)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="write an interaction log in MovieLens format")
    data_sub = data.add_subparsers(dest="source", required=True)
    synth = data_sub.add_parser(
        "synth", help="seeded synthetic data with taste clusters and power-law popularity"
    )
    _synth_args(synth)
    synth.add_argument("--out", required=True)
    synth.set_defaults(func=cmd_synth)

    add_build(sub)

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
    tune.add_argument("--repo", default=default_repo())
    tune.set_defaults(func=cmd_tune)

    for name, func, text in (
        ("evaluate", cmd_evaluate, "print a bundle's evaluation table"),
        ("verify", cmd_verify, "load and check a bundle as the server would"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("bundle", nargs="?", help="bundle directory (default: the current one)")
        sp.add_argument("--artifacts", default=default_artifacts())
        sp.set_defaults(func=func)
