"""The chart's manifests for a local cluster: values composed and rendered as Helm does.

Exports:
    render_chart(...)        the chart's manifests as dicts (the real Helm engine)
    compose_values(...)      -f files, --set* expressions and overrides, merged as Helm does
    ClusterError             anything that stops the cluster from coming up
    CHART_DIR                the chart of a source checkout (absent in a wheel install)
    PACKAGE_ROOT, RELEASE, NAMESPACE, HELM_HINT   the defaults they use
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "render_chart",
    "compose_values",
    "ClusterError",
    "CHART_DIR",
    "PACKAGE_ROOT",
    "RELEASE",
    "NAMESPACE",
    "HELM_HINT",
]

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = PACKAGE_ROOT / "chart"
RELEASE = "nimbus"
NAMESPACE = "default"
HELM_HINT = "pip install helm-python-sdk==0.2.2"


class ClusterError(RuntimeError):
    """The chart cannot be rendered or run, or a process failed to start or get ready."""


# -- rendering ---------------------------------------------------------------------------------


def _helm() -> Any:
    try:
        import helm_python
    except ImportError:
        raise ClusterError(f"rendering the chart needs the Helm engine: {HELM_HINT}") from None
    return helm_python


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:
        raise ClusterError("reading rendered manifests needs PyYAML: pip install pyyaml") from None
    return yaml


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's values coalescing: maps merge recursively, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _dotted(key: str, value: Any) -> dict[str, Any]:
    """``"a.b\\.c"`` -> ``{"a": {"b.c": value}}`` (a ``--set`` path; ``\\.`` escapes a dot)."""
    parts = [p.replace("\\.", ".") for p in re.split(r"(?<!\\)\.", key)]
    tree: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        tree = {part: tree}
    return tree


def compose_values(
    values_files: Sequence[str | os.PathLike[str]] = (),
    *,
    set_args: Sequence[str] = (),
    set_string_args: Sequence[str] = (),
    set_file_args: Sequence[str] = (),
    set_values: Mapping[str, Any] | None = None,
    replicas: int | None = None,
) -> dict[str, Any]:
    """The user values as ``helm install -f ... --set ...`` composes them, then the local
    overrides: ``set_values`` (dotted path -> value) and ``replicas`` (mta.replicas)."""
    values: dict[str, Any] = {}
    helm: Any = None  # the helm_python module, loaded only when values files or --set need it
    if values_files or set_args or set_string_args or set_file_args:
        helm = _helm()
    for path in values_files:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ClusterError(f"values file {path}: {exc.strerror}") from None
        values = _merge(values, helm.values_from_yaml(text) or {})
    for parse, items in (
        ("parse_set_string", set_args),
        ("parse_set_string_values", set_string_args),
        ("parse_set_file", set_file_args),
    ):
        for item in items:
            try:
                values = _merge(values, getattr(helm, parse)(item))
            except helm.HelmError as exc:
                raise ClusterError(f"--set {item!r}: {exc}") from None
    for key, value in (set_values or {}).items():
        values = _merge(values, _dotted(key, value))
    if replicas is not None:
        values = _merge(values, {"mta": {"replicas": int(replicas)}})
    return values


def render_chart(
    chart_dir: str | os.PathLike[str] | None = None,
    values: Mapping[str, Any] | None = None,
    *,
    release: str = RELEASE,
    namespace: str = NAMESPACE,
) -> list[dict[str, Any]]:
    """``helm template`` offline: schema-checked, manifests in template order (NOTES left out)."""
    chart = Path(chart_dir) if chart_dir is not None else CHART_DIR
    if not (chart / "Chart.yaml").is_file():
        raise ClusterError(
            f"no Helm chart at {chart}: the chart ships with the source checkout, "
            f"not the installed package; pass --chart DIR"
        )
    helm, yaml = _helm(), _yaml()
    try:
        with helm.Chart.load(str(chart)) as loaded:
            loaded.validate_schema(dict(values or {}))
            rendered = loaded.render(
                dict(values or {}),
                name=release,
                namespace=namespace,
                is_install=True,
                is_upgrade=False,
            )
    except helm.HelmError as exc:
        raise ClusterError(f"rendering {chart}: {exc}") from None
    docs: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith(("NOTES.txt", ".tpl")):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if isinstance(d, dict))
    return docs
