"""The shape of the code: one folder per job, imports pointing down, no cycles, ray only in the Serve
layer, the harness outside the product (serve_app/__init__.py says which job is where).

`problems(root)` reads every module's imports with `ast` (module level, in functions, under
TYPE_CHECKING: all of them) and returns what breaks a rule; the tests run it on this checkout and on
small planted trees, so a rule that stopped finding anything would fail here too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = "serve_app"
# What each of serve_app's packages may import besides itself: only packages below it.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "request": frozenset({"core"}),
    "api": frozenset({"core", "request"}),
    "events": frozenset({"core"}),
    "telemetry": frozenset({"core", "request"}),
    "offline": frozenset({"core", "request", "events", "telemetry"}),
    "control": frozenset({"core"}),
    "serve": frozenset({"core", "request", "api", "events", "telemetry"}),
    "cli": frozenset({"core", "events", "offline", "control"}),
}
ENTRY_MODULES = {"__init__": frozenset(), "app": frozenset({"serve"})}  # serve_app/*.py
RAY_ALLOWED = frozenset({"serve"})  # the only package of the product that may import ray
TOOLING = ("harness", "loadtest", "tests")  # never imported by the product
MAX_MODULES = 15


def modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for the product and the harness under `root`."""
    out = {}
    for top in (PRODUCT, "harness"):
        for path in sorted((root / top).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, name: str, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import in the file; `from pkg import mod` counts as mod."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield (candidate if candidate in known else base), node.lineno


def _job(name: str) -> str:
    """The package of serve_app a module belongs to (an entry module is its own)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _claims_no_ray(path: Path) -> bool:
    doc = (ast.get_docstring(ast.parse(path.read_text())) or "").lower()
    return "no ray" in doc or "no `import ray`" in doc


def problems(root: Path) -> list[str]:
    known = modules(root)
    found: list[str] = []
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        where = path.relative_to(root)
        rays = []
        for target, line in imports(path, name, known):
            top = target.split(".")[0]
            if target in known and target != name:
                graph[name].add(target)
            if top == "ray":
                rays.append(line)
            if name.split(".")[0] == "harness":
                if top == "loadtest":
                    found.append(f"{where}:{line}: the harness imports {target}")
                continue
            if top in TOOLING:
                found.append(f"{where}:{line}: the product imports {target} (tooling, not in the wheel)")
            if top != PRODUCT:
                continue
            job, other = _job(name), _job(target)
            allowed = ENTRY_MODULES.get(job) if job in ENTRY_MODULES else MAY_IMPORT.get(job)
            if allowed is None:
                found.append(f"{where}: serve_app/{job} is not a package MAY_IMPORT knows")
            elif other != job and other not in allowed:
                found.append(f"{where}:{line}: serve_app.{job} may not import {target} (serve_app.{other})")
        if rays and name.split(".")[0] == PRODUCT and _job(name) not in RAY_ALLOWED:
            found.append(f"{where}:{rays[0]}: imports ray outside the Serve layer (serve_app/serve)")
        if rays and _claims_no_ray(path):
            found.append(f"{where}:{rays[0]}: its docstring says it has no ray import, and it has one")
    found += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(graph)]
    for folder in {p.parent for p in known.values()}:
        count = len([p for p in folder.glob("*.py") if p.name != "__init__.py"])
        if count > MAX_MODULES:
            found.append(f"{folder.relative_to(root)} holds {count} modules (at most {MAX_MODULES})")
        if not (folder / "__init__.py").is_file() or not ast.get_docstring(
            ast.parse((folder / "__init__.py").read_text())
        ):
            found.append(f"{folder.relative_to(root)}/__init__.py does not say what the folder owns")
    loose = {p.stem for p in (root / PRODUCT).glob("*.py")} - set(ENTRY_MODULES)
    found += [f"serve_app/{m}.py: serve_app/ holds only package folders and its entry modules" for m in loose]
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected group of more than one module (Tarjan), as a path through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_this_checkout_keeps_every_rule() -> None:
    assert problems(ROOT) == []


def _plant(root: Path, files: dict[str, str]) -> Path:
    """A minimal product tree (every package of MAY_IMPORT, with its docstring) plus `files`."""
    for folder in (PRODUCT, *(f"{PRODUCT}/{job}" for job in MAY_IMPORT), "harness"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / "__init__.py").write_text('"""What this folder owns."""\n')
    for rel, text in files.items():
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"serve_app/core/x.py": "from serve_app.serve import app\n"}, "serve_app.core may not import"),
        ({"serve_app/offline/x.py": "import serve_app.serve.app\n"}, "serve_app.offline may not import"),
        ({"serve_app/request/x.py": "import ray\n"}, "imports ray outside the Serve layer"),
        (
            {"serve_app/request/x.py": "def f():\n    from ray import serve\n"},
            "imports ray outside the Serve layer",
        ),
        ({"serve_app/control/x.py": "from harness import cluster\n"}, "the product imports harness"),
        ({"harness/x.py": '"""No ray import here."""\nimport ray.serve\n'}, "docstring says it has no ray"),
        (
            {
                "serve_app/request/a.py": "from serve_app.request import b\n",
                "serve_app/request/b.py": "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from serve_app.request.a import A\n",
            },
            "import cycle: serve_app.request.a -> serve_app.request.b",
        ),
        ({**{f"serve_app/core/m{i}.py": "" for i in range(16)}}, "holds 16 modules"),
        ({"serve_app/helpers.py": ""}, "serve_app/helpers.py: serve_app/ holds only"),
        ({"serve_app/request/x.py": "from serve_app.core import settings\n"}, None),
    ],
)
def test_a_planted_violation_is_found(tmp_path: Path, files: dict[str, str], expected: str | None) -> None:
    found = problems(_plant(tmp_path, files))
    if expected is None:
        assert found == []
    else:
        assert any(expected in p for p in found), found


def test_no_code_cites_a_file_outside_the_repository() -> None:
    outside = "design" + ".md"  # the starting design lives outside the repository; docs/ is the design
    cited = [
        str(path.relative_to(ROOT))
        for top in (PRODUCT, "harness", "loadtest", "tests", "feature_repo", "cluster")
        for path in (ROOT / top).rglob("*")
        if path.is_file() and path.suffix in {".py", ".yaml", ".yml"} and outside in path.read_text()
    ]
    assert cited == []
