"""`recsys retrain` (`make retrain`): the serving bundle's recipe again on its data plus the events since,
then a canary of the new bundle when a service runs (the recipe is serve_app/control/retrain.py)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import httpx

from serve_app.cli import offline, rollout
from serve_app.cli.service import connect
from serve_app.control import retrain
from serve_app.core.bundle import point_current, resolve_current
from serve_app.core.errors import RecsysError


def _parsed(add: object, argv: list[str]) -> argparse.Namespace:
    """`argv` parsed by one command's parser (`add(sub)` registers it), as `recsys` would."""
    p = argparse.ArgumentParser(prog="recsys")
    add(p.add_subparsers(dest="command", required=True))  # type: ignore[operator]
    return p.parse_args(argv)


def cmd_retrain(args: argparse.Namespace) -> None:
    artifacts = Path(args.artifacts)
    try:  # the recipe of the bundle that serves, when a service runs here (`current` may differ)
        admin, _ = connect(argparse.Namespace(address=args.address, url=None, metrics=None, app="recsys"))
        serving: Path | None = Path(admin.serving().main_path)
    except (RecsysError, OSError, httpx.HTTPError):
        serving = None
    source = serving or resolve_current(artifacts)
    manifest = json.loads((source / "manifest.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        argv = retrain.build_args(manifest, args.repo, args.artifacts, Path(tmp) / "config.json", args.data)
        print(f"retraining {manifest['version']}'s recipe: recsys {' '.join(argv)}")
        build_args = _parsed(offline.add_build, [*argv, *(["--quiet"] if args.quiet else [])])
        build_args.func(build_args)
    new = resolve_current(artifacts)
    if serving is not None and serving.parent.parent.resolve() == artifacts.resolve():
        point_current(artifacts, serving)  # `current` is what serves until a promote moves it
        print(f"artifacts/current stays on {serving.name}, the serving bundle, until --promote")
    if args.share <= 0 or serving is None:
        print(f"to roll it out: recsys rollout {new} --share 0.1")
        return
    rollout_args = _parsed(
        rollout.add_parser,
        [
            "rollout",
            str(new),
            "--share",
            str(args.share),
            *(["--address", args.address] if args.address else []),
        ],
    )
    try:
        rollout.run(rollout_args)
    except (RecsysError, OSError, httpx.HTTPError) as exc:
        print(f"not rolled out ({exc}); when a service runs: recsys rollout {new} --share {args.share}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    retrain = sub.add_parser(
        "retrain",
        help="the serving bundle's recipe again on its data plus the events since, then a canary of it",
    )
    retrain.add_argument("--data", help="MovieLens-format directory (default: the one it was built from)")
    retrain.add_argument(
        "--share", type=float, default=0.1, help="canary share when a service runs (0: none)"
    )
    retrain.add_argument("--address", help="Ray dashboard URL (default: the cluster `make run` started here)")
    retrain.add_argument("--repo", default=offline.default_repo())
    retrain.add_argument("--artifacts", default=offline.default_artifacts())
    retrain.add_argument("--quiet", action="store_true")
    retrain.set_defaults(func=cmd_retrain)
