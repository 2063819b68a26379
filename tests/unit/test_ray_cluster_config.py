"""cluster/ray_cluster.yaml: valid for `ray up`, checked the way Ray checks it, without a cluster."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "cluster" / "ray_cluster.yaml"
# The schema ships inside the installed ray package; finding it imports nothing.
RAY_SCHEMA = Path(importlib.util.find_spec("ray").origin).parent / "autoscaler" / "ray-schema.json"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG.read_text())


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(RAY_SCHEMA.read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    return jsonschema.Draft7Validator(schema)


def test_the_config_validates_against_rays_cluster_schema(validator, config) -> None:
    assert [e.message for e in validator.iter_errors(config)] == []


def test_ray_up_prepares_and_accepts_it(config) -> None:
    # What `ray up` does before it touches a node: merge the local provider's defaults, then validate.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(config)
    validate_config(prepared)
    [node_type] = prepared["available_node_types"].values()
    assert node_type["min_workers"] == node_type["max_workers"] == len(config["provider"]["worker_ips"])


@pytest.mark.parametrize(
    "breakage",
    [
        lambda c: c["provider"].pop("type"),
        lambda c: c.__setitem__("min_worker", 2),  # no such field
        lambda c: c.__setitem__("head_start_ray_commands", "ray start --head"),  # a list of commands
        lambda c: c["auth"].__setitem__("ssh_usr", "recsys"),  # auth refuses unknown keys
    ],
)
def test_a_broken_config_fails_validation(validator, config, breakage) -> None:
    broken = copy.deepcopy(config)
    breakage(broken)
    assert list(validator.iter_errors(broken))


def test_every_ray_process_starts_with_token_auth(config) -> None:
    assert config["provider"]["type"] == "local" and config["provider"]["head_ip"]
    assert "~/.ray/auth_token" in config["file_mounts"]
    [head] = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    [worker] = [c for c in config["worker_start_ray_commands"] if "ray start" in c]
    for command in (head, worker):
        assert "RAY_AUTH_MODE=token" in command and "RAY_AUTH_TOKEN_PATH=$HOME/.ray/auth_token" in command
    assert "--head" in head and "--dashboard-host=127.0.0.1" in head
    assert "--address=$RAY_HEAD_IP:6379" in worker
    assert any("pip install" in c and "~/recsys" in c for c in config["setup_commands"])
    for remote, local in config["file_mounts"].items():
        if not local.startswith("~"):  # the checkout's own paths, relative to the repository root
            assert (ROOT / local).exists() or local == "artifacts", remote
