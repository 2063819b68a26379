"""The bundle loader refuses anything inconsistent, and publish switches `current` atomically."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost as xgb

from serve_app.core import bundle as bundle_mod
from serve_app.core.bundle import load_bundle, publish, resolve_current, sha256
from serve_app.core.errors import BundleError
from serve_app.core.features import FEATURE_NAMES

pytestmark = pytest.mark.slow  # they share the session's real build (`built`)


@pytest.fixture
def copy(built, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built.bundle, tmp_path / built.bundle.name))


def read_manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / "manifest.json").read_text())


def edit_manifest(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    manifest = read_manifest(path)
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def refused(path: Path) -> str:
    with pytest.raises(BundleError) as err:
        load_bundle(path)
    return str(err.value)


def test_an_intact_copy_loads(copy: Path) -> None:
    bundle = load_bundle(copy)
    assert bundle.version == copy.name == read_manifest(copy)["version"]
    assert bundle.index.d == bundle.embedding_dim
    assert tuple(bundle.ranker.feature_names) == FEATURE_NAMES


@pytest.mark.parametrize("name", ["index.faiss", "ranker.ubj", "items.npz"])
def test_flipped_bytes_fail_the_checksum(copy: Path, name: str) -> None:
    data = bytearray((copy / name).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    (copy / name).write_bytes(bytes(data))
    message = refused(copy)
    assert name in message and "checksum" in message


def test_unreadable_artifact_with_a_matching_checksum_is_refused(copy: Path) -> None:
    (copy / "ranker.ubj").write_bytes(os.urandom(2048))
    edit_manifest(copy, lambda m: m["files"]["ranker.ubj"].update(sha256=sha256(copy / "ranker.ubj")))
    assert "could not be read" in refused(copy)


def test_ranker_trained_on_other_features_is_refused(copy: Path) -> None:
    names = [*FEATURE_NAMES[:-1], "user_item_genre_share"]
    x = np.random.default_rng(0).random((40, len(names))).astype(np.float32)
    dtrain = xgb.DMatrix(x, label=(x[:, 0] > 0.5).astype(np.float32), feature_names=names)
    xgb.train({"objective": "binary:logistic", "max_depth": 2}, dtrain, 3).save_model(
        str(copy / "ranker.ubj")
    )
    edit_manifest(copy, lambda m: m["files"]["ranker.ubj"].update(sha256=sha256(copy / "ranker.ubj")))
    assert "user_item_genre_share" in refused(copy)


def test_wrong_embedding_dim_is_refused(copy: Path) -> None:
    edit_manifest(copy, lambda m: m.update(embedding_dim=m["embedding_dim"] + 1))
    assert "dimension" in refused(copy)


@pytest.mark.parametrize("key", ["feature_names", "user_feature_names", "item_feature_names"])
def test_renamed_feature_in_manifest_is_refused(copy: Path, key: str) -> None:
    def rename(m: dict[str, Any]) -> None:
        m[key][1] = m[key][1] + "_v2"

    edit_manifest(copy, rename)
    message = refused(copy)
    assert key in message
    assert read_manifest(copy)[key][1] in message


def test_reordered_feature_names_are_refused(copy: Path) -> None:
    edit_manifest(copy, lambda m: m["feature_names"].reverse())
    assert "feature_names" in refused(copy)


def test_wrong_item_count_is_refused(copy: Path) -> None:
    edit_manifest(copy, lambda m: m.update(n_items=m["n_items"] - 1))
    assert "items" in refused(copy)


def test_other_format_is_refused(copy: Path) -> None:
    edit_manifest(copy, lambda m: m.update(format=99))
    assert "format 99" in refused(copy)


@pytest.mark.parametrize("name", bundle_mod.FILES)
def test_missing_file_is_refused(copy: Path, name: str) -> None:
    (copy / name).unlink()
    assert f"{name} is missing" in refused(copy)


def test_missing_manifest_is_refused(copy: Path) -> None:
    (copy / "manifest.json").unlink()
    assert "manifest.json is missing" in refused(copy)


def test_malformed_manifest_json_is_refused(copy: Path) -> None:
    text = (copy / "manifest.json").read_text()
    (copy / "manifest.json").write_text(text[: len(text) // 2])
    assert "manifest.json is not valid JSON" in refused(copy)


@pytest.fixture
def artifacts(built, tmp_path: Path) -> Path:
    """An artifacts dir whose `current` points at a copy of the built bundle (version v1)."""
    root = tmp_path / "artifacts"
    v1 = shutil.copytree(built.bundle, root / "bundles" / "v1")
    edit_manifest(Path(v1), lambda m: m.update(version="v1"))
    os.symlink(Path("bundles") / "v1", root / "current")
    return root


def staged(built, artifacts: Path, version: str) -> Path:
    staging = Path(shutil.copytree(built.bundle, artifacts / f".staging-{version}"))
    edit_manifest(staging, lambda m: m.update(version=version))
    return staging


def test_publish_switches_current_with_one_rename(
    built, artifacts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace
    switches: list[tuple[str, str]] = []

    def observing_replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
        if Path(dst) == artifacts / "current":
            # Right up to the switch, readers still see the old, complete bundle ...
            assert resolve_current(artifacts) == (artifacts / "bundles" / "v1").resolve()
            # ... and the new link is already complete, pointing at the published directory.
            assert os.readlink(src) == str(Path("bundles") / "v2")
            switches.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", observing_replace)
    final = publish(staged(built, artifacts, "v2"), artifacts)
    assert len(switches) == 1
    assert final == artifacts / "bundles" / "v2"
    assert os.readlink(artifacts / "current") == str(Path("bundles") / "v2")  # relative: the dir can move
    assert load_bundle(resolve_current(artifacts)).version == "v2"
    assert load_bundle(artifacts / "bundles" / "v1").version == "v1"  # the previous one is untouched
    assert sorted(p.name for p in artifacts.iterdir()) == ["bundles", "current"]


def test_publish_replaces_a_stale_temporary_link(built, artifacts: Path) -> None:
    os.symlink("bundles/gone", artifacts / ".current.tmp")
    publish(staged(built, artifacts, "v2"), artifacts)
    assert resolve_current(artifacts) == (artifacts / "bundles" / "v2").resolve()
    assert not (artifacts / ".current.tmp").is_symlink()


def test_publishing_an_existing_version_fails_and_keeps_current(built, artifacts: Path) -> None:
    with pytest.raises(OSError):
        publish(staged(built, artifacts, "v1"), artifacts)
    assert os.readlink(artifacts / "current") == str(Path("bundles") / "v1")
    assert load_bundle(resolve_current(artifacts)).version == "v1"


def test_resolve_current_without_a_bundle_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no current bundle"):
        resolve_current(tmp_path)
