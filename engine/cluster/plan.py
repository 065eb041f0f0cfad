"""The records of a chart translation: the pods it reads and the Plan it produces (pure).

Exports:
    Plan, ProcessSpec, FileSpec, DirSpec     frozen results
    TranslateError                           a manifest that cannot run locally
    Pod                                      one pod of a workload, as the translation sees it
    container_port(pod, port, container)     a numeric or named container port -> number
    LOOPBACK                                 the address every local process listens on
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Plan",
    "ProcessSpec",
    "FileSpec",
    "DirSpec",
    "TranslateError",
    "Pod",
    "container_port",
    "LOOPBACK",
]

LOOPBACK = "127.0.0.1"


class TranslateError(ValueError):
    """The rendered chart has something a local cluster cannot run; names the object."""


@dataclass(frozen=True)
class FileSpec:
    """A file of a ConfigMap/Secret volume, to write before the process starts."""

    path: str
    content: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class DirSpec:
    """A volume directory; ``wipe``: start empty (emptyDir, ConfigMap, Secret), else keep."""

    path: str
    wipe: bool


@dataclass(frozen=True)
class ProcessSpec:
    """One container of one pod, as a local process."""

    name: str  # the pod name; "<pod>/<container>" in multi-container pods
    argv: tuple[str, ...]
    env: Mapping[str, str]  # the container's env only (rewritten)
    cwd: str
    ports: Mapping[str, int]  # container port name (or number) -> local port
    readiness: tuple[str, Any]  # ("http", url) | ("tcp", port) | ("none", None)
    pod: str = ""
    container: str = ""
    workload: str = ""  # "StatefulSet/<name>"
    role: str = ""  # nimbus subcommand (mta, tsa, sink), else container name
    depends_on: tuple[str, ...] = ()  # pods whose Services this process references
    dirs: tuple[DirSpec, ...] = ()
    files: tuple[FileSpec, ...] = ()
    grace: float = 30.0  # terminationGracePeriodSeconds


@dataclass(frozen=True)
class Plan:
    """Everything to run: specs in start order, Service addresses, the HTTP credentials."""

    specs: tuple[ProcessSpec, ...]
    services: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # svc -> port -> addr
    credentials: tuple[str, str] | None = None

    def waves(self) -> list[list[ProcessSpec]]:
        """Specs grouped so each group only depends on earlier groups (a cycle: one group)."""
        remaining, out = list(self.specs), []
        done: set[str] = set()
        while remaining:
            wave = [s for s in remaining if set(s.depends_on) <= done]
            if not wave:
                wave = remaining
            out.append(wave)
            done |= {s.pod for s in wave}
            remaining = [s for s in remaining if s not in wave]
        return out

    def by_role(self, role: str) -> list[ProcessSpec]:
        return [s for s in self.specs if s.role == role]


@dataclass
class Pod:
    """One pod (``<workload>-<i>``) of a StatefulSet or Deployment: its template, its name."""

    name: str
    kind: str
    workload: str
    labels: Mapping[str, str]
    spec: Mapping[str, Any]
    claims: tuple[str, ...]  # volumeClaimTemplates names
    headless: str  # StatefulSet serviceName ("" for Deployments)


def container_port(pod: Pod, port: Any, container: Mapping[str, Any] | None = None) -> int:
    """A numeric port, or a named one looked up in the container's (else the pod's) ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    containers = [container] if container is not None else pod.spec.get("containers") or []
    for c in containers:
        for p in c.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
    raise TranslateError(f"pod {pod.name}: no container port named {port!r}")
