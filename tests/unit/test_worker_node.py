"""harness.worker_node.place: the two-node Serve config pins the stages to the worker and the rest to
the head, and stays a config Serve's own schema accepts (no Ray started)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness import worker_node

ROOT = Path(__file__).resolve().parents[2]


def test_stages_go_to_the_worker_and_the_ingress_to_the_head(tmp_path: Path) -> None:
    from ray.serve.schema import ServeDeploySchema

    placed = worker_node.place(ROOT / "cluster" / "serve_config.yaml", tmp_path / "two.yaml")
    [app] = ServeDeploySchema.model_validate(yaml.safe_load(placed.read_text())).applications
    selectors = {d.name: d.ray_actor_options.label_selector for d in app.deployments}
    assert selectors == {
        "Ingress": {"recsys-node": "head"},
        "Retriever": {"recsys-node": "stages"},
        "Ranker": {"recsys-node": "stages"},
        "EventWriter": {"recsys-node": "head"},  # off the request path: with the ingress
    }
    # Only the selector is added: the CPUs and everything else stay as shipped.
    original = yaml.safe_load((ROOT / "cluster" / "serve_config.yaml").read_text())
    stripped = yaml.safe_load(placed.read_text())
    for d in stripped["applications"][0]["deployments"]:
        d["ray_actor_options"].pop("label_selector")
    assert stripped == original


def test_a_config_without_stages_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no Retriever/Ranker"):
        worker_node.place(ROOT / "cluster" / "serve_config.colocated.yaml", tmp_path / "two.yaml")


def test_the_labels_reach_ray_start_as_key_value_pairs() -> None:
    assert worker_node.label_arg(worker_node.WORKER_LABELS) == "--labels=recsys-node=stages"
