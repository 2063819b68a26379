"""The product's wheel holds the product only: serve_app, and none of the local harness, the load tools
or the tests (`pip wheel . --no-deps`, what a serving image installs from)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_wheel_holds_serve_app_and_none_of_the_harness(tmp_path: Path) -> None:
    # Built from a copy of the checkout, so the build's own folders (build/, *.egg-info) stay out of it.
    source = tmp_path / "source"
    skip = shutil.ignore_patterns(
        ".git", ".venv", "artifacts", "build", "reports", ".run", ".bench", "*.egg-info"
    )
    shutil.copytree(ROOT, source, ignore=skip, symlinks=True)
    pip = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        ".",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(tmp_path),
    ]
    built = subprocess.run(pip, capture_output=True, text=True, timeout=300, cwd=source)
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = tmp_path.glob("recsys_serve-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"serve_app"}, tops
    assert "serve_app/app.py" in names and "serve_app/serve/app.py" in names  # serve_app.app:build_app
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "serve_app.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
