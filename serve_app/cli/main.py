"""`recsys`: the offline path from the command line (data, build, tune, evaluate, verify), and for a
running service `recsys events FILE`, `recsys rollout`, `recsys items add` and `recsys retrain`."""

from __future__ import annotations

import argparse
import sys

from serve_app.cli import events, items, offline, retrain, rollout
from serve_app.core.errors import RecsysError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recsys", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    offline.add_parsers(sub)
    events.add_parser(sub)
    rollout.add_parser(sub)
    items.add_parser(sub, {"repo": offline.default_repo(), "artifacts": offline.default_artifacts()})
    retrain.add_parser(sub)
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
