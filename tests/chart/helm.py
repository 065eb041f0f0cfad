"""The one place the chart tests call the Helm engine (helm-python-sdk, ``import helm_python``).

Exports:
    CHART, VALUES_DIR                      paths of the chart and the test values files
    load_values(name) -> dict              a values file under tests/chart/values ("" = defaults)
    validate_schema(values)                values.schema.json check; raises HelmValuesError
    render_templates(values, chart_dir=CHART) -> dict   template path -> rendered text (NOTES.txt
                                           included); chart: a copy of the chart to render
    render(values, chart_dir=CHART) -> list[dict]   the manifests, parsed (empty documents dropped)
    lint(values, kube_version) -> dict     ``helm lint --strict`` report
    parse_set_file(expression) -> dict     a ``--set-file`` expression as values
    RenderError, ValuesError               what a failed render / schema check raises

Swapping the binding (or shelling out to a helm binary) means changing this file only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python
import yaml
from helm_python.errors import HelmRenderError as RenderError
from helm_python.errors import HelmValuesError as ValuesError

__all__ = [
    "CHART",
    "VALUES_DIR",
    "load_values",
    "validate_schema",
    "render_templates",
    "render",
    "lint",
    "parse_set_file",
    "RenderError",
    "ValuesError",
]

CHART = Path(__file__).resolve().parents[2] / "chart"
VALUES_DIR = Path(__file__).resolve().parent / "values"
RELEASE = "demo"
NAMESPACE = "mail"


def load_values(name: str) -> dict[str, Any]:
    """The values of ``tests/chart/values/<name>.yaml``; ``""`` means the chart defaults."""
    if not name:
        return {}
    return yaml.safe_load((VALUES_DIR / f"{name}.yaml").read_text()) or {}


def validate_schema(values: dict[str, Any]) -> None:
    with helm_python.Chart.load(CHART) as chart:
        chart.validate_schema(values)


def render_templates(
    values: dict[str, Any] | None = None,
    *,
    is_install: bool = True,
    chart_dir: Path = CHART,
) -> dict[str, str]:
    """Render as ``helm install --dry-run`` would (schema checked first), offline."""
    with helm_python.Chart.load(chart_dir) as chart:
        chart.validate_schema(values or {})
        return chart.render(
            values or {},
            name=RELEASE,
            namespace=NAMESPACE,
            is_install=is_install,
            is_upgrade=not is_install,
        )


def render(values: dict[str, Any] | None = None, chart_dir: Path = CHART) -> list[dict[str, Any]]:
    """The rendered manifests as dicts, in template order (NOTES.txt left out)."""
    docs = []
    for path, text in sorted(render_templates(values, chart_dir=chart_dir).items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def lint(values: dict[str, Any] | None = None, kube_version: str = "v1.31.0") -> dict[str, Any]:
    """``helm lint --strict`` (note: it does not report missing ``required`` values)."""
    return helm_python.lint(
        CHART, values or {}, strict=True, namespace=NAMESPACE, kube_version=kube_version
    )


def parse_set_file(expression: str) -> dict[str, Any]:
    return helm_python.parse_set_file(expression)
