"""cluster/kuberay/rayservice.yaml: what serve_app.control.kuberay writes from cluster/serve_config.yaml,
valid for KubeRay's RayService CRD (v1.5.2, vendored in tests/data/kuberay) and for Serve's own schema.

Offline and without a cluster: jsonschema over the CRD's OpenAPI schema, pydantic over serveConfigV2.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib
from fractions import Fraction
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement

from serve_app.control import kuberay
from serve_app.core.paths import NODE_ENV
from serve_app.core.settings import AppArgs

ROOT = Path(__file__).resolve().parents[2]
SERVE_CONFIG = ROOT / "cluster" / "serve_config.yaml"
MANIFEST = ROOT / "cluster" / "kuberay" / "rayservice.yaml"
SCHEMA = ROOT / "tests" / "data" / "kuberay" / "rayservice_v1_schema.json"


def strict(schema: Any) -> Any:
    """The CRD schema as kubectl applies it. kubectl's default field validation (Strict) refuses a field
    the CRD does not name, where JSON Schema lets it through unless additionalProperties is false: say
    so wherever the CRD lists properties. Kubernetes' x-kubernetes-* keywords mean nothing to jsonschema
    and are ignored (so are the CRD's CEL rules, which only the API server can check)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: strict(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties", "anyOf", "allOf", "oneOf", "not"):
        if isinstance(out.get(key), dict | list):
            out[key] = strict(out[key])
    return out


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft4Validator:
    # A CRD's schema is OpenAPI v3.0's Schema Object, a JSON Schema draft 4/5 dialect; the keywords this
    # one uses (type, properties, required, items, enum, anyOf, pattern, ...) mean the same in Draft 4.
    schema = strict(json.loads(SCHEMA.read_text()))
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return yaml.safe_load(MANIFEST.read_text())


@pytest.fixture(scope="module")
def source() -> dict[str, Any]:
    return yaml.safe_load(SERVE_CONFIG.read_text())


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this tree's serve_app, not an installed one
    return subprocess.run(
        [sys.executable, "-m", "serve_app.control.kuberay", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )


def test_the_committed_manifest_is_what_the_generator_writes() -> None:
    result = run_cli("--check")
    assert result.returncode == 0, result.stderr


def test_check_fails_on_a_stale_or_missing_manifest(tmp_path: Path) -> None:
    stale = tmp_path / "rayservice.yaml"
    stale.write_text(MANIFEST.read_text().replace("maxReplicas: ", "maxReplicas: 1"))
    result = run_cli("--check", "--out", str(stale))
    assert result.returncode == 1 and "out of date with cluster/serve_config.yaml" in result.stderr
    assert run_cli("--check", "--out", str(tmp_path / "absent.yaml")).returncode == 1


def test_the_manifest_validates_against_the_rayservice_crd(validator, manifest) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(manifest)]
    assert errors == []
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"


def _worker(m: dict[str, Any]) -> dict[str, Any]:
    return m["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]


def _head_container(m: dict[str, Any]) -> dict[str, Any]:
    return m["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]


def _break_type(m):
    _worker(m)["minReplicas"] = "one"


def _drop_required(m):
    del m["spec"]["rayClusterConfig"]["headGroupSpec"]


def _drop_group_name(m):
    del _worker(m)["groupName"]


def _misspell(m):
    _worker(m)["idleTimeoutSecond"] = 60  # idleTimeoutSeconds: only strict field validation sees it


def _unknown_field(m):
    m["spec"]["rayClusterConfig"]["authOption"] = {"mode": "token"}


def _bad_auth_mode(m):
    m["spec"]["rayClusterConfig"]["authOptions"]["mode"] = "tokens"


def _port_as_string(m):
    _head_container(m)["ports"][0]["containerPort"] = "6379"


def _secret_without_key(m):
    del _head_container(m)["env"][1]["valueFrom"]["secretKeyRef"]["key"]


@pytest.mark.parametrize(
    "breakage",
    [
        _break_type,
        _drop_required,
        _drop_group_name,
        _misspell,
        _unknown_field,
        _bad_auth_mode,
        _port_as_string,
        _secret_without_key,
    ],
)
def test_a_broken_manifest_fails_validation(validator, manifest, breakage) -> None:
    broken = copy.deepcopy(manifest)
    breakage(broken)
    assert list(validator.iter_errors(broken)), f"{breakage.__name__} passed the CRD schema"


def test_serve_config_v2_is_the_serve_config_with_only_the_documented_changes(manifest, source) -> None:
    from ray.serve.schema import ServeDeploySchema  # a pydantic model: importing it starts no cluster

    v2 = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    schema = ServeDeploySchema.model_validate(v2)
    for app in schema.applications:
        args = AppArgs.model_validate(app.args)  # unknown or mistyped args would fail the deploy
        assert (ROOT / args.feature_store_yaml).is_file()
    assert "${REDIS_CONNECTION_STRING" in (ROOT / kuberay.KUBERNETES["feature_store_yaml"]).read_text()
    assert v2["http_options"]["host"] == "0.0.0.0" and v2["proxy_location"] == "EveryNode"
    # Undo exactly the documented changes: what is left must be the Serve config, autoscaling included.
    v2["http_options"]["host"] = source["http_options"]["host"]
    v2["proxy_location"] = source["proxy_location"]
    for app, src in zip(v2["applications"], source["applications"], strict=True):
        assert app["args"]["feature_store_yaml"] == "feature_repo/feature_store.redis.yaml"
        del app["args"]["feature_store_yaml"]
        assert "feature_store_yaml" not in src["args"]
    assert v2 == source


def test_token_auth_is_on_and_left_to_the_operator(manifest) -> None:
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token"}
    # KubeRay refuses token auth below Ray 2.52; rayVersion must be the Ray the image (pyproject) has.
    [ray_req] = [
        Requirement(r)
        for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
        if Requirement(r).name == "ray"
    ]
    assert ray_req.specifier.contains(cluster["rayVersion"])
    installed = importlib.metadata.version("ray")
    assert installed.split(".")[:2] == cluster["rayVersion"].split(".")[:2]
    assert f"{kuberay.RAY_VERSION}-py311" in kuberay.IMAGE
    # Set by hand too, these would clash with the operator's (and only its token reaches the dashboard).
    for container in _containers(manifest):
        assert {e["name"] for e in container["env"]}.isdisjoint({"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"})


def _containers(m: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = m["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def _cpu(q: str) -> Fraction:
    return Fraction(q[:-1]) / 1000 if q.endswith("m") else Fraction(q)


def _gib(q: str) -> Fraction:
    assert q.endswith("Mi")
    return Fraction(q[:-2]) / 1024


def test_resources_cover_the_serve_configs_replicas(manifest, source) -> None:
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    for container in _containers(manifest):
        assert container["resources"]["requests"] == container["resources"]["limits"]
        assert set(container["resources"]["limits"]) == {"cpu", "memory"}
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no replicas on the head
    # The demand, counted here from the Serve config itself rather than by the module under test.
    low = high = Fraction(0)
    replicas = 0
    for d in source["applications"][0]["deployments"]:
        cpus = Fraction(str(d["ray_actor_options"]["num_cpus"]))
        bounds = d.get("autoscaling_config") or {
            "min_replicas": d["num_replicas"],
            "max_replicas": d["num_replicas"],
        }
        low, high = low + cpus * bounds["min_replicas"], high + cpus * bounds["max_replicas"]
        replicas += bounds["max_replicas"]
    group = _worker(manifest)
    pod_cpus = int(group["rayStartParams"]["num-cpus"])
    assert group["minReplicas"] * pod_cpus >= low and (group["minReplicas"] - 1) * pod_cpus < low
    assert group["maxReplicas"] * pod_cpus >= high * kuberay.CPU_HEADROOM
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    pod = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert _cpu(pod["cpu"]) > pod_cpus  # room for the raylet, agents and proxy beside the replicas
    assert _gib(pod["memory"]) * group["maxReplicas"] >= kuberay.REPLICA_MEMORY_GIB * replicas
    head = _head_container(manifest)["resources"]["limits"]
    assert _gib(head["memory"]) >= 2 and _cpu(head["cpu"]) >= 1


def test_the_bounds_follow_the_serve_config(source) -> None:
    bigger = copy.deepcopy(source)
    for d in bigger["applications"][0]["deployments"]:
        if "autoscaling_config" in d:
            d["autoscaling_config"]["max_replicas"] = 10
    before = kuberay.sizing(kuberay.demands(source))
    after = kuberay.sizing(kuberay.demands(bigger))
    assert after.max_workers > before.max_workers and after.min_workers == before.min_workers
    del bigger["applications"][0]["deployments"][0]["ray_actor_options"]
    with pytest.raises(ValueError, match="num_cpus"):
        kuberay.demands(bigger)


def test_readiness_on_healthz_is_on_the_workers_not_the_head(manifest) -> None:
    worker = _worker(manifest)["template"]["spec"]["containers"][0]
    assert worker["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 8000}
    # KubeRay deploys serveConfigV2 only once the head is Ready: /healthz there would never pass.
    assert "readinessProbe" not in _head_container(manifest)
    for container in _containers(manifest):
        assert {"name": "serve", "containerPort": 8000} in container["ports"]
        env = {e["name"]: e for e in container["env"]}
        assert env["REDIS_CONNECTION_STRING"]["valueFrom"]["secretKeyRef"]["name"] == kuberay.REDIS_SECRET
        assert env["RECSYS_HOME"]["value"] == kuberay.RECSYS_HOME
        for name, value in NODE_ENV.items():  # Serve's proxy retries a request a dead replica held
            assert env[name]["value"] == value
