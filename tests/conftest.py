"""Shared fixtures: real Feast repos on SQLite in temp dirs, one real small build per session, and real
redis-servers for the Redis online store."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from harness import redis_server
from harness.ports import free_port
from harness.ray_head import new_token_file

ROOT = Path(__file__).resolve().parents[1]
MOVIELENS = ROOT.parent / "shared" / "datasets" / "ml-latest-small"

# Ray's token auth stays on in tests too: each head (harness/ray_head.py) makes a token file of its
# own, which its drivers read; this one is what a Ray client in a test reads when it names no head.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.pop("RAY_AUTH_TOKEN", None)
_TOKEN_DIR = tempfile.mkdtemp(prefix="recsys-test-ray-")
atexit.register(shutil.rmtree, _TOKEN_DIR, True)
os.environ["RAY_AUTH_TOKEN_PATH"] = str(new_token_file(Path(_TOKEN_DIR) / "auth_token"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("FEAST_DISABLE_USAGE", "1")


@contextlib.contextmanager
def local_serve(namespace: str) -> Iterator[int]:
    """A local Ray head of its own (2 CPUs, no dashboard) driven by this test process, with Serve's HTTP
    on a free loopback port; yields the port, and shuts Serve down and stops the head after.

    The head is `ray start` in a process of its own, not `ray.init()` here: this process keeps gRPC
    threads from the clusters it drove before, and a head started in-process is forked from it with
    Python code to run before exec, which can hang (CI saw the GCS never write its port file).
    """
    from ray import serve

    from harness import cluster, ray_head

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="recsys-test-head-") as tmp:
        state_file = Path(tmp) / "cluster.json"
        state = ray_head.start_head(state_file, dashboard=False)
        try:
            with ray_head.driver_of(state, namespace=namespace):
                serve.start(http_options={"host": "127.0.0.1", "port": port})
                try:
                    yield port
                finally:
                    serve.shutdown()
        finally:
            cluster.stop(state_file)
            shutil.rmtree(state["temp_dir"], ignore_errors=True)


def running(pid: int) -> bool:
    """Alive and not a zombie: a `ray start` this process started is its child, and once stopped only
    its exit status is left to reap."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def new_version_of(bundle_dir: Path, dest: Path, version: str) -> Path:
    """A copy of a bundle under a new version (the manifest is not checksummed, its files are)."""
    shutil.copytree(bundle_dir, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["version"] = version
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def wait_for_version(base_url: str, version: str, timeout_s: float) -> None:
    """Poll GET /version until the ingress and every stage serve `version` (or the time is up)."""
    import time

    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = httpx.get(f"{base_url}/version", timeout=10).json()
        if v["bundle_version"] == version and set(v["stages"].values()) == {version}:
            break
        time.sleep(0.5)
    time.sleep(1.0)  # let requests that were routed before the switch finish


def copy_feature_repo(dest: Path) -> Path:
    """A fresh copy of feature_repo/ (definitions and yaml, no data) at dest."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("definitions.py", "feature_store.yaml", "feature_store.redis.yaml", ".feastignore"):
        shutil.copy(ROOT / "feature_repo" / name, dest / name)
    return dest


@pytest.fixture
def feature_repo(tmp_path: Path) -> Path:
    return copy_feature_repo(tmp_path / "feature_repo")


@pytest.fixture(scope="session")
def movielens_dir() -> Path:
    if not (MOVIELENS / "ratings.csv").is_file():
        pytest.skip(f"{MOVIELENS} is absent (it is only in the development checkout, never bundled)")
    return MOVIELENS


@dataclass(frozen=True)
class Built:
    repo: Path
    artifacts: Path
    bundle: Path
    data_dir: Path


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """One real build (synthetic data, Feast on SQLite, ALS, FAISS, XGBoost) shared by the session."""
    from serve_app.offline.build import build
    from serve_app.offline.config import BuildConfig
    from serve_app.offline.data import load_movielens
    from serve_app.offline.synth import SynthSpec, generate, write_movielens

    base = tmp_path_factory.mktemp("built")
    data_dir = write_movielens(*generate(SynthSpec(n_items=1_000, n_users=400, seed=3)), base / "data")
    repo = copy_feature_repo(base / "feature_repo")
    artifacts = base / "artifacts"
    path, _ = build(load_movielens(data_dir), BuildConfig(), repo, artifacts, progress=False)
    return Built(repo=repo, artifacts=artifacts, bundle=path, data_dir=data_dir)


@dataclass
class LocalRedis:
    """The redis-server a test module runs; `server` changes when a test restarts it."""

    server: redis_server.RedisServer

    def restart(self) -> None:
        """Start it again on the same port and directory (its append-only file restores the data)."""
        self.server = redis_server.start(Path(self.server.dir), self.server.port)


@pytest.fixture(scope="module")
def local_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    """A real redis-server on a free 127.0.0.1 port with its own data directory; stops only it."""
    if redis_server.executable() is None:
        pytest.skip("redis-server is not on PATH (.ci/run installs it: apt-get install redis-server)")
    handle = LocalRedis(redis_server.start(tmp_path_factory.mktemp("redis")))
    try:
        yield handle
    finally:
        redis_server.stop(handle.server)


class Traffic:
    """Client threads asking for random users until stopped (a context manager): counts answers, and
    keeps what was not a 200 (`failed`) and the fallback reason of every degraded answer."""

    def __init__(self, base: str, users: list[int], clients: int = 2) -> None:
        import threading

        self.base, self.users = base, users
        self.count, self.failed, self.degraded = 0, [], []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def _run(self, seed: int) -> None:
        import random

        import httpx

        rng = random.Random(seed)
        with httpx.Client(base_url=self.base, timeout=30) as client:
            while not self.stop.is_set():
                r = client.post("/recommend", json={"user_id": rng.choice(self.users), "k": 5})
                self.count += 1
                if r.status_code != 200:
                    self.failed.append(f"{r.status_code} {r.text[:120]}")
                elif r.json()["degraded"]:
                    self.degraded.append(r.json()["fallback"] or r.json()["degraded_reason"])

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)
