"""The catalogues benchmarked: the project's current bundle, MovieLens small, a 1M-item synthetic one.

Each non-default catalogue gets its own feature repo copy and artifacts dir under .bench/ (gitignored),
so building one never touches the project's feature_repo/ or artifacts/. Builds run only when the
bundle is absent; the 1M-item one takes minutes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / ".bench"
MOVIELENS_SMALL = ROOT.parent / "shared" / "datasets" / "ml-latest-small"
RECSYS = Path(sys.executable).parent / "recsys"


@dataclass(frozen=True)
class Catalogue:
    name: str
    artifacts: Path
    repo: Path
    build_args: list[str] = field(default_factory=list)  # `recsys build` flags beyond --repo/--artifacts
    explicit: Path | None = None  # a given bundle directory: read, never built

    @property
    def bundle(self) -> Path:
        return self.explicit or self.artifacts / "current"

    def ensure(self, log_dir: Path) -> Path:
        """The resolved bundle directory, built first when there is none."""
        if self.explicit is not None and not (self.explicit / "manifest.json").is_file():
            raise SystemExit(f"{self.explicit}: not a bundle (no manifest.json)")
        if not (self.bundle / "manifest.json").is_file():
            if self.repo != ROOT / "feature_repo" and not (self.repo / "feature_store.yaml").exists():
                copy_feature_repo(self.repo)
            log_dir.mkdir(parents=True, exist_ok=True)
            log = log_dir / f"build-{self.name}.log"
            cmd = [str(RECSYS), "build", "--repo", str(self.repo), "--artifacts", str(self.artifacts)]
            print(f"building the {self.name} catalogue (log: {log}): {' '.join(cmd + self.build_args)}")
            with log.open("w") as fh:
                subprocess.run(
                    [*cmd, *self.build_args], check=True, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT
                )
        return self.bundle.resolve()


def copy_feature_repo(dest: Path) -> Path:
    """Definitions and yaml of feature_repo/ without its data: a build fills data/ for this copy only."""
    dest.mkdir(parents=True, exist_ok=True)
    for src in (ROOT / "feature_repo").iterdir():
        if src.is_file():
            shutil.copy(src, dest / src.name)
    return dest


def default() -> Catalogue:
    return Catalogue("default", ROOT / "artifacts", ROOT / "feature_repo")


def synth_1m() -> Catalogue:
    home = BENCH_DIR / "synth-1m"
    return Catalogue(
        "synth-1m", home / "artifacts", home / "feature_repo", ["--items", "1000000", "--users", "100000"]
    )


def movielens_small() -> Catalogue | None:
    if not (MOVIELENS_SMALL / "ratings.csv").is_file():
        return None
    home = BENCH_DIR / "ml-latest-small"
    return Catalogue(
        "ml-latest-small", home / "artifacts", home / "feature_repo", ["--data", str(MOVIELENS_SMALL)]
    )


def custom(bundle: Path, repo: Path) -> Catalogue:
    """A bundle built elsewhere (e.g. a test fixture): never built here, only read."""
    bundle = bundle.resolve()
    return Catalogue("custom", bundle.parent, repo.resolve(), explicit=bundle)


def resolve(names: list[str]) -> list[Catalogue]:
    known = {"default": default, "synth-1m": synth_1m, "ml-latest-small": movielens_small}
    out = []
    for name in names:
        if name not in known:
            raise SystemExit(f"unknown catalogue {name!r}; choose from {', '.join(known)}")
        cat = known[name]()
        if cat is None:
            print(f"skipping {name}: {MOVIELENS_SMALL} is absent")
            continue
        out.append(cat)
    return out
