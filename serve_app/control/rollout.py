"""`recsys rollout`: a new bundle to a running service, in place, through a canary.

    recsys rollout BUNDLE [--share 0.1]   check it, show its evaluation next to the serving one's,
                                          and serve it to that share of users (request/canary.py)
    recsys rollout --status               what serves where, and requests per arm and outcome
    recsys rollout --promote              the canary's bundle serves everyone
    recsys rollout --rollback             everyone back on the main bundle, exactly as before
    recsys rollout BUNDLE --now           switch everyone at once (e.g. back to a bundle promoted over)

Each step is one declarative deploy through Serve's REST API (what `serve deploy` sends): the running
config with the bundle-holding deployments' `user_config` changed. Serve applies a change of
`user_config` alone in place (`reconfigure` on the running replicas: no restart); a replica that
refuses the bundle keeps serving what it had and says so in GET /version, and this command then puts
the previous config back. GET /version is the truth about what serves where at every step; nothing is
kept on the side.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from serve_app.control.serve_api import ServeApi
from serve_app.core.errors import ConfigError, DependencyError
from serve_app.core.paths import home, resolve_path

# The deployments holding a bundle, by topology; their user_config carries the rollout. The
# EventWriter takes the main bundle only (it folds events in with the main model).
HOLDERS = {
    "graph": ("Ingress", "Retriever", "Ranker", "EventWriter"),
    "colocated": ("Ingress", "EventWriter"),
}
# Keys a step drops unless it names or keeps them: a canary's, and an item delta (core/item_delta.py),
# which extends one bundle only.
BUNDLE_KEYS = ("canary_bundle", "canary_share", "item_delta")


def with_keys(app: dict[str, Any], **keys: Any) -> dict[str, Any]:
    """A copy of an application's config whose bundle holders' user_config also name these keys."""
    return with_rollout(app, keep=BUNDLE_KEYS, **keys)


def with_rollout(app: dict[str, Any], keep: tuple[str, ...] = (), **bundle_keys: Any) -> dict[str, Any]:
    """A copy of an application's config whose bundle holders' user_config name these bundle keys
    (other keys they had are kept; canary and item-delta keys neither given nor in `keep` are dropped)."""
    app = json.loads(json.dumps(app))
    topology = app.get("args", {}).get("topology", "graph")
    deployments = app.setdefault("deployments", [])
    by_name = {d["name"]: d for d in deployments}
    for name in HOLDERS[topology]:
        deployment = by_name.get(name)
        if deployment is None:
            deployment = {"name": name}
            deployments.append(deployment)
        old = deployment.get("user_config") or {}
        kept = {k: v for k, v in old.items() if k not in BUNDLE_KEYS or k in keep}
        deployment["user_config"] = {**kept, **{k: v for k, v in bundle_keys.items() if v is not None}}
    return app


def canary_config(app: dict[str, Any], main: str, canary: str, share: float) -> dict[str, Any]:
    """The main bundle as it serves (with its item delta, if any) and a canary beside it."""
    return with_rollout(app, keep=("item_delta",), bundle=main, canary_bundle=canary, canary_share=share)


def single_config(app: dict[str, Any], bundle: str, same_main: bool = False) -> dict[str, Any]:
    """Everyone on `bundle` (a promote, a rollback, or a switch at once). `same_main`: it is the main
    bundle already serving (a rollback), whose item delta stays; another bundle drops it."""
    return with_rollout(app, keep=("item_delta",) if same_main else (), bundle=bundle)


@dataclass(frozen=True)
class Serving:
    """What serves, as far as a rollout cares: the versions from GET /version, the bundles' directories
    from the deployed config (GET /version names no path)."""

    main: str  # version
    main_path: str
    canary: str | None
    canary_path: str | None
    share: float
    stages: dict[str, str]
    canary_stages: dict[str, str]
    refused: dict[str, str]
    item_delta: str | None = None  # the item delta file extending the main bundle (core/item_delta.py)

    @classmethod
    def of(cls, version: dict[str, Any], app_config: dict[str, Any], paths: bool = True) -> Serving:
        """`paths=False` leaves the directories unresolved (""): while a new config rolls out, the
        replicas may still serve versions the deployed config no longer names."""
        canary = version.get("canary") or {}
        main_hint, canary_hint, delta = deployed_paths(app_config)
        canary_version = canary.get("bundle_version")
        locate = bundle_dir if paths else lambda *_: ""
        return cls(
            main=version["bundle_version"],
            main_path=locate(version["bundle_version"], main_hint),
            canary=canary_version,
            canary_path=locate(canary_version, canary_hint) if canary_version and canary_hint else None,
            share=float(canary.get("share", 0.0)),
            stages=version.get("stages", {}),
            canary_stages=canary.get("stages", {}),
            refused=version.get("refused") or {},
            item_delta=str(resolve_path(delta)) if delta and version.get("item_delta") else None,
        )

    def settled(self, main: str, canary: str | None) -> bool:
        """Every stage serves `main`, and `canary` as its canary (None: no canary anywhere)."""
        if self.main != main or set(self.stages.values()) != {main}:
            return False
        if canary is None:
            return self.canary is None
        return self.canary == canary and set(self.canary_stages.values()) == {canary}


def deployed_paths(app_config: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """(main bundle, canary bundle, item delta) as the running config names them: the Ingress's
    `user_config` (what a rollout step set), else the app args."""
    args = app_config.get("args") or {}
    ingress = next((d for d in app_config.get("deployments", []) if d.get("name") == "Ingress"), {})
    named = {**args, **(ingress.get("user_config") or {})}
    return named.get("bundle", "artifacts/current"), named.get("canary_bundle"), named.get("item_delta")


def bundle_dir(version: str, hint: str) -> str:
    """The directory of bundle `version`: the deployed path `hint` when it holds that version, else
    that version's directory beside it (`artifacts/current` moves with every build; bundles stay)."""
    base = version.split("+", 1)[0]  # a bundle extended by an item delta serves <version>+<stamp>
    path = resolve_path(hint)
    for candidate in (path, path.parent / "bundles" / base, path.parent / base):
        manifest = candidate / "manifest.json"
        if manifest.is_file() and json.loads(manifest.read_text()).get("version") == base:
            return str(candidate.resolve())
    raise ConfigError(
        f"bundle {base} is not at {path} nor beside it: the config deployed another path (a relative"
        f" path is read from RECSYS_HOME, here {home()}: set it to the service's home)"
    )


class ServeAdmin(ServeApi):
    """The running service: Serve's REST API (serve_api.py) and the app's own HTTP address."""

    def __init__(
        self, dashboard: str, token: str | None, url: str | None = None, app: str = "recsys"
    ) -> None:
        super().__init__(dashboard, token, app)
        self._url = url

    @property
    def url(self) -> str:
        if self._url is None:
            self._url = self.http_url()
        return self._url

    def serving(self, paths: bool = True) -> Serving:
        try:
            version = httpx.get(f"{self.url}/version", timeout=10).json()
        except httpx.HTTPError as exc:
            raise DependencyError(f"the service at {self.url} did not answer GET /version: {exc}") from exc
        return Serving.of(version, self.app_config(self.details()), paths)


def wait_settled(
    admin: ServeAdmin, main: str, canary: str | None, timeout_s: float, confirmations: int = 5
) -> Serving:
    """Until Serve reports every deployment of the app healthy (it does once every replica ran the
    new reconfigure) and GET /version shows the step `confirmations` times in a row (each call asks
    one replica per deployment, so several calls see several replicas); a refusal seen on the way or
    the timeout is an error. The Serving returned names versions, not directories."""
    deadline = time.monotonic() + timeout_s
    seen = 0
    while True:
        serving = admin.serving(paths=False)  # versions only: mid-rollout they are not the config's
        if serving.refused:
            raise ConfigError(f"refused: {json.dumps(serving.refused)}")
        seen = seen + 1 if serving.settled(main, canary) and admin.healthy() else 0
        if seen >= confirmations:
            return serving
        if time.monotonic() > deadline:
            raise ConfigError(f"not applied within {timeout_s:.0f} s: {serving}")
        time.sleep(0.3)


def apply(admin: ServeAdmin, app_config: dict[str, Any], main: str, canary: str | None, timeout_s: float):
    """Deploy the app config and wait until it serves (main, canary); on a refusal, put back the config
    that was running and say why."""
    details = admin.details()
    before = admin.app_config(details)
    admin.put(admin.deploy_body(details, app_config))
    try:
        return wait_settled(admin, main, canary, timeout_s)
    except ConfigError as exc:
        admin.put(admin.deploy_body(admin.details(), before))
        raise ConfigError(f"rollout undone, the previous config is back: {exc}") from exc


def check_new_bundle(path: Path, serving_path: str) -> tuple[dict, dict]:
    """Load and verify the bundle as a replica would; refuse one whose user features differ from the
    serving bundle's (both arms read the same online store). Returns both manifests."""
    from serve_app.core.bundle import load_bundle

    new = load_bundle(path).manifest
    old = json.loads((Path(serving_path) / "manifest.json").read_text())
    if new.get("user_feature_names") != old.get("user_feature_names"):
        raise ConfigError(
            f"{path}: its user features {new.get('user_feature_names')} are not the serving bundle's "
            f"{old.get('user_feature_names')}; both arms read the same online store (feast apply first)"
        )
    return old, new


def evaluation_table(old: dict, new: dict) -> str:
    """The two bundles' offline evaluation side by side: NDCG@10 and recall@10 with 95% CIs."""
    lines = [f"{'method':<16} {'serving ' + old['version']:<44} {'new ' + new['version']:<44}"]
    methods = dict.fromkeys([*old["evaluation"]["methods"], *new["evaluation"]["methods"]])
    for method in methods:
        cells = []
        for manifest in (old, new):
            m = manifest["evaluation"]["methods"].get(method)
            cells.append(
                f"ndcg@10 {m['ndcg@10']:.4f} [{m['ndcg@10_ci95'][0]:.3f}, {m['ndcg@10_ci95'][1]:.3f}]"
                f" rec@10 {m['recall@10']:.3f}"
                if m
                else "-"
            )
        lines.append(f"{method:<16} {cells[0]:<44} {cells[1]:<44}")
    return "\n".join(lines)


def arm_counts(metrics_text: str) -> dict[str, dict[str, float]]:
    """Requests by arm and outcome, summed over replicas, from Ray's Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name not in ("ray_recsys_requests", "ray_recsys_requests_total"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                arm = out.setdefault(sample.labels.get("arm", "main"), {})
                outcome = sample.labels.get("outcome", "")
                arm[outcome] = arm.get(outcome, 0.0) + sample.value
    return out


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a hit rate (sound at small n and at rates near 0 or 1)."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def hit_rates(answers: list[tuple[str, list[int], set[int]]]) -> dict[str, dict[str, Any]]:
    """Per arm: users asked, those whose answer holds one of their held-out items, the rate and its
    95% interval. `answers`: (arm, recommended ids, the user's held-out ids), one per user."""
    out: dict[str, dict[str, Any]] = {}
    for arm, shown, held_out in answers:
        tally = out.setdefault(arm, {"users": 0, "hits": 0})
        tally["users"] += 1
        tally["hits"] += bool(held_out.intersection(shown))
    for tally in out.values():
        tally["hit_rate"] = tally["hits"] / tally["users"]
        tally["ci95"] = wilson(tally["hits"], tally["users"])
    return out
