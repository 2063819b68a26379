"""The manual tells the truth: docs/ops.md states every setting as ServingSettings defines it and as
the shipped configs set it, every link in README.md and docs/ leads somewhere, every measurement file
says when, how, where and with which report, and README stays a manual (at most 400 lines)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.control.frontdoor import BalancerPolicy
from serve_app.core.settings import AppArgs

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CONFIGS = {
    "graph config": ROOT / "cluster" / "serve_config.yaml",
    "colocated config": ROOT / "cluster" / "serve_config.colocated.yaml",
}
ABSENT = "–"


def table(markdown: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the markdown table whose first column is headed `first_header`."""
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_header:
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append(
                    dict(zip(cells, [c.strip() for c in row.strip().strip("|").split("|")], strict=True))
                )
            return rows
    raise AssertionError(f"no table headed {first_header!r}")


def value(cell: str) -> Any:
    """A table cell as the value it documents: `x` is JSON (or a bare word), "–" is absent."""
    if cell == ABSENT:
        return ABSENT
    text = cell.strip("`")
    try:
        return json.loads(text)
    except ValueError:
        return text


def shipped(config: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    app = yaml.safe_load(config.read_text())["applications"][0]
    return app.get("args") or {}, {d["name"]: d for d in app.get("deployments", [])}


def test_every_app_arg_is_documented_with_its_default_and_the_shipped_values() -> None:
    rows = {value(r["key"]): r for r in table((DOCS / "ops.md").read_text(), "key")}
    assert set(rows) == set(AppArgs.model_fields), "docs/ops.md's app args differ from AppArgs"
    for name, field in AppArgs.model_fields.items():
        default = list(field.default) if isinstance(field.default, tuple) else field.default
        assert value(rows[name]["default"]) == default, f"{name}: documented default"
        for column, config in CONFIGS.items():
            args, _ = shipped(config)
            assert value(rows[name][column]) == args.get(name, ABSENT), f"{name} in {config.name}"


def _option(deployment: dict[str, Any], dotted: str) -> Any:
    node: Any = deployment
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return ABSENT
        node = node[key]
    return node


def test_every_documented_deployment_option_is_what_the_configs_ship() -> None:
    rows = table((DOCS / "ops.md").read_text(), "deployment option")
    for row in rows:
        name, option = row["deployment option"].split(" ", 1)
        for column, config in CONFIGS.items():
            _, deployments = shipped(config)
            got = _option(deployments[name], value(option)) if name in deployments else ABSENT
            assert value(row[column]) == got, f"{name} {option} in {config.name}"
    for column, config in CONFIGS.items():  # and every autoscaling key shipped is documented
        for name, deployment in shipped(config)[1].items():
            for key in deployment.get("autoscaling_config", {}):
                documented = f"{name} `autoscaling_config.{key}`"
                assert any(r["deployment option"] == documented for r in rows), f"{documented} ({column})"


def test_every_front_door_key_is_documented_with_its_default_and_the_shipped_values() -> None:
    rows = {value(r["policy key"]): r for r in table((DOCS / "ops.md").read_text(), "policy key")}
    assert set(rows) == set(BalancerPolicy.model_fields), (
        "docs/ops.md's door policy differs from BalancerPolicy"
    )
    for name, field in BalancerPolicy.model_fields.items():
        assert value(rows[name]["default"]) == field.default, f"{name}: documented default"
        for column in ("balancer.yaml", "balancer.graph.yaml"):
            shipped_policy = yaml.safe_load((ROOT / "cluster" / column).read_text())
            assert value(rows[name][f"`{column}`"]) == shipped_policy.get(name, ABSENT), f"{name} in {column}"


def test_the_readme_is_a_manual_not_a_notebook() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 400


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _documents() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md")), ROOT / "loadtest" / "README.md"]


@pytest.mark.parametrize("doc", _documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_leads_to_a_file_and_heading_that_exist(doc: Path) -> None:
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        assert linked.exists(), f"{doc.name}: {target} does not exist"
        if anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", linked.read_text(), flags=re.M)
            assert anchor in {_anchor(h) for h in headings}, f"{doc.name}: no heading for {target}"


def test_every_measurement_says_when_how_where_and_is_listed() -> None:
    folder = DOCS / "measurements"
    index = (folder / "README.md").read_text()
    for path in sorted(folder.glob("*.md")):
        if path.name == "README.md":
            continue
        head = path.read_text().splitlines()[:16]
        for field in ("Date", "Command", "Machine", "Report folder"):
            assert any(line.startswith(f"- **{field}:**") for line in head), f"{path.name}: no {field}"
        assert f"({path.name})" in index, f"{path.name} is not listed in docs/measurements/README.md"
