"""The one client of Serve's REST API on a cluster's dashboard (with Ray's token), for everyone who
drives a running service: `recsys rollout` and `recsys items add`, and the harness (`make run`, its
front door, the tests) that deploys, waits and follows the replicas' ports.

`GET/PUT /api/serve/applications/` is what `serve deploy` and `serve status` use; `target_groups` in
its answer is how a load balancer finds direct-ingress replicas; `/api/v0/nodes` is Ray's state API
(`ray list nodes`). Every call carries `Authorization: Bearer <token>`: with token auth on, the
dashboard refuses anyone without it.
"""

from __future__ import annotations

from typing import Any

import httpx

from serve_app.core.errors import ConfigError, DependencyError

APPLICATIONS = "/api/serve/applications/"


class ServeApi:
    def __init__(self, dashboard: str, token: str | None, app: str = "recsys", timeout_s: float = 30) -> None:
        self.dashboard, self.app, self.timeout_s = dashboard.rstrip("/"), app, timeout_s
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client: httpx.Client | None = None  # one keep-alive connection for a caller that polls

    def details(self) -> dict[str, Any]:
        """Serve's whole state: applications, their deployments and replicas, `target_groups`."""
        return self._call("GET", APPLICATIONS).json()

    def put(self, body: dict[str, Any]) -> None:
        """A declarative deploy (what `serve deploy` sends): it replaces every application."""
        self._call("PUT", APPLICATIONS, json=body)

    def app_config(self, details: dict[str, Any]) -> dict[str, Any]:
        info = details.get("applications", {}).get(self.app)
        if not info or not info.get("deployed_app_config"):
            raise ConfigError(f"no application {self.app!r} deployed from a config at {self.dashboard}")
        return info["deployed_app_config"]

    def deploy_body(self, details: dict[str, Any], app_config: dict[str, Any]) -> dict[str, Any]:
        """The whole declarative config with this app's replaced: a PUT replaces every application."""
        apps = [
            app_config if name == self.app else info["deployed_app_config"]
            for name, info in details.get("applications", {}).items()
            if info.get("deployed_app_config")
        ]
        # The instance-wide options as they run (the details use the deploy schema's own types): a
        # step must not reset, say, a target_capacity an operator lowered.
        body: dict[str, Any] = {
            key: details.get(key)
            for key in ("proxy_location", "http_options", "grpc_options", "target_capacity")
        }
        body["applications"] = apps
        return {k: v for k, v in body.items() if v is not None}

    def status(self) -> tuple[str, str]:
        """The app's status as Serve's controller reports it (NOT_STARTED, DEPLOYING, RUNNING,
        DEPLOY_FAILED, ...) and its message."""
        info = self.details().get("applications", {}).get(self.app, {})
        return info.get("status", "NOT_STARTED"), info.get("message", "")

    def healthy(self) -> bool:
        """The app RUNNING and each of its deployments HEALTHY."""
        app = self.details().get("applications", {}).get(self.app, {})
        deployments = app.get("deployments", {}).values()
        return app.get("status") == "RUNNING" and all(d.get("status") == "HEALTHY" for d in deployments)

    def http_ports(self) -> list[int]:
        """Ports that serve the app over HTTP, as Serve publishes them (`target_groups`).

        With direct ingress these are the ingress replicas' own ports, the supported way for a client
        or a load balancer to find them; otherwise the proxies'. Only the port is used: Serve publishes
        the node's primary IP, while the replica binds to http_options.host (127.0.0.1 in our configs).
        """
        return [
            int(t["port"])
            for group in self.details().get("target_groups", [])
            if group.get("protocol") == "HTTP" and group.get("app_name", self.app) in (self.app, "")
            for t in group.get("targets", [])
        ]

    def direct_ingress_ports(self, proxy_port: int) -> list[int]:
        """The ingress replicas' own HTTP ports (RAY_SERVE_THROUGHPUT_OPTIMIZED=1), sorted; [] without."""
        return sorted(p for p in self.http_ports() if p != proxy_port)

    def replica_nodes(self) -> dict[str, list[str]]:
        """Deployment -> node ids of its RUNNING replicas (`serve status`'s source)."""
        deployments = self.details().get("applications", {}).get(self.app, {}).get("deployments", {})
        return {
            name: sorted(r["node_id"] for r in d.get("replicas", []) if r.get("state") == "RUNNING")
            for name, d in deployments.items()
        }

    def nodes(self) -> list[dict[str, Any]]:
        """Ray's state API (`ray list nodes`): every node the GCS knows, alive or dead."""
        answer = self._call("GET", "/api/v0/nodes", params={"limit": 1000, "detail": "true"})
        return answer.json()["data"]["result"]["result"]

    def http_url(self) -> str:
        """The Serve proxy's address, from the running `http_options`."""
        http = self.details().get("http_options", {})
        return f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        if self._client is None:
            self._client = httpx.Client(base_url=self.dashboard, headers=self.headers, timeout=self.timeout_s)
        try:
            answer = self._client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise DependencyError(f"Serve's API at {self.dashboard} did not answer: {exc}") from exc
        if answer.status_code >= 400:
            raise DependencyError(f"{method} {path}: {answer.status_code} {answer.text[:300]}")
        return answer
