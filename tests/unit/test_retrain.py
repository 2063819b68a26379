"""`recsys retrain` repeats the serving bundle's recipe on the same data (no Ray, no build)."""

from __future__ import annotations

import json

import pytest

from serve_app.cli.main import parser
from serve_app.control.retrain import build_args, data_args
from serve_app.core.errors import ConfigError

SYNTH = "synthetic items=5000 users=2000 mean_interactions=40.0 clusters=20 weeks=12 seed=0"


def test_a_synthetic_source_gives_the_same_synthetic_flags_back():
    args = parser().parse_args(["build", *data_args(SYNTH)])
    assert (args.items, args.users, args.mean_interactions, args.clusters, args.weeks, args.seed) == (
        5000,
        2000,
        40.0,
        20,
        12,
        0,
    )
    assert args.data is None


def test_a_directory_source_is_used_when_it_is_here_and_data_overrides_it(tmp_path):
    assert data_args(str(tmp_path)) == ["--data", str(tmp_path)]
    assert data_args(str(tmp_path), data="/other") == ["--data", "/other"]
    with pytest.raises(ConfigError, match="give --data"):
        data_args(str(tmp_path / "gone"))


def test_the_build_repeats_the_manifests_build_config(tmp_path):
    manifest = {"build_config": {"seed": 4, "embedding": {"factors": 32}}, "data_source": {"path": SYNTH}}
    argv = build_args(manifest, "repo", "arts", tmp_path / "config.json", None)
    args = parser().parse_args(argv)
    assert (args.repo, args.artifacts, args.items) == ("repo", "arts", 5000)
    assert json.loads((tmp_path / "config.json").read_text()) == manifest["build_config"]
