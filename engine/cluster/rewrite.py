"""Address and path rewriting for a local cluster: Kubernetes names and ports -> loopback (pure).

Exports:
    Ports(allocate)                      (pod, container port) -> local port, allocated once
    AddressRewriter(manifests, pods, namespace, ports)
        .rewrite(pod, value, mounts, deps)          one env value or argument
        .rewrite_args(pod, words, mounts, deps, program_is_redis)   a container's arguments
        .rewrite_peers(pod, value, port, mounts)    a peer list of DNS names and URLs
        .services                        Service name -> port name -> local address
    rewrite_path(value, mounts)          a path under a mountPath (also ``--x=/path``), or None

What is rewritten (see engine.cluster.render for the whole translation): a listen address
``0.0.0.0:P`` (also ``[::]:P``, ``:P``, ``localhost:P``, ``127.0.0.1:P``) becomes
``127.0.0.1:<free port>``; so does the value after ``--port``; a Service name, bare or
qualified, with a Service port becomes ``127.0.0.1:<local port>`` of the Service's target
port on the FIRST pod it selects, and that pod becomes a dependency of the process.

A peer list (``rewrite_peers``: comma-separated DNS names and URLs, like
``NIMBUS_CLUSTER_PEERS``) is DNS discovery: a bare headless Service name resolves to every
pod it selects, so it becomes ``http://127.0.0.1:<local port>`` of each of them, on the
given container port (a ClusterIP Service name or a pod's own DNS name: its one pod).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from engine.cluster.plan import LOOPBACK, Pod, container_port

__all__ = ["Ports", "AddressRewriter", "rewrite_path"]

_SCHEME_PORTS = {"http": 80, "https": 443, "redis": 6379, "rediss": 6379, "smtp": 25}


class Ports:
    """(pod, container port) -> local port, allocated on first use."""

    def __init__(self, allocate: Callable[[], int]) -> None:
        self._allocate = allocate
        self.local: dict[tuple[str, int], int] = {}

    def __call__(self, pod: str, port: int) -> int:
        if (pod, port) not in self.local:
            self.local[(pod, port)] = self._allocate()
        return self.local[(pod, port)]


class AddressRewriter:
    """The chart's Services as loopback addresses, and the rewriting of values that use them.

    manifests: the rendered documents (their Services are read, in order).
    pods: every pod of the chart (the Services' selectors pick among them).
    namespace: the release namespace (for qualified Service names).
    ports: the cluster's local port allocation, shared with the translator.
    """

    def __init__(
        self,
        manifests: Iterable[Mapping[str, Any]],
        pods: Sequence[Pod],
        namespace: str,
        ports: Ports,
    ) -> None:
        self.namespace = namespace
        self.pods = pods
        self.ports = ports
        self.hosts: dict[str, dict[int, tuple[str, int]]] = {}  # DNS name -> port -> target
        self.members: dict[str, list[str]] = {}  # DNS name -> the pods its A records are
        self.services: dict[str, dict[str, str]] = {}
        for doc in manifests:
            if doc.get("kind") == "Service":
                self._add_service(doc)
        self._host_re = self._compile_hosts()

    # -- Services ---------------------------------------------------------------------------

    def _dns_names(self, name: str) -> list[str]:
        ns = self.namespace
        return [name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"]

    def _add_service(self, doc: Mapping[str, Any]) -> None:
        name = doc["metadata"]["name"]
        spec = doc.get("spec") or {}
        selector = spec.get("selector") or {}
        if not selector:
            return  # no selector: no pods to route to (e.g. an ExternalName Service)
        targets = [p for p in self.pods if all(p.labels.get(k) == v for k, v in selector.items())]
        if not targets:
            return
        table: dict[int, tuple[str, int]] = {}
        shown: dict[str, str] = {}
        per_pod: dict[str, dict[int, tuple[str, int]]] = {p.name: {} for p in targets}
        for sp in spec.get("ports") or []:
            port = int(sp["port"])
            target = sp.get("targetPort", port)
            for i, pod in enumerate(targets):
                cport = container_port(pod, target)
                per_pod[pod.name][port] = (pod.name, cport)
                if i == 0:
                    table[port] = (pod.name, cport)
                    shown[str(sp.get("name") or port)] = f"{LOOPBACK}:{self.ports(pod.name, cport)}"
        headless = spec.get("clusterIP") == "None"
        for dns in self._dns_names(name):
            self.hosts[dns] = table
            self.members[dns] = [p.name for p in targets] if headless else [targets[0].name]
        for pod in targets:  # a StatefulSet pod's own DNS name under its governing Service
            if pod.headless == name:
                for dns in self._dns_names(name):
                    self.hosts[f"{pod.name}.{dns}"] = per_pod[pod.name]
                    self.members[f"{pod.name}.{dns}"] = [pod.name]
        self.services[name] = shown

    def _compile_hosts(self) -> re.Pattern[str] | None:
        if not self.hosts:
            return None
        names = "|".join(re.escape(h) for h in sorted(self.hosts, key=len, reverse=True))
        return re.compile(rf"(?<![\w.-])({names})(?![\w-]|\.\w)(?::(\d+))?")

    # -- rewriting --------------------------------------------------------------------------

    _ANY_HOST = re.compile(
        r"(?<![\w.:\]-])(0\.0\.0\.0|\[::\]|\*|localhost|127\.0\.0\.1|\[::1\])"
        r":(\d+)(?!\d)"
    )
    _BARE_PORT = re.compile(r"^:(\d+)$")
    _SCHEME = re.compile(r"([a-z][a-z0-9+.-]*)://(?:[^@/\s]*@)?$")

    def rewrite(self, pod: str, value: str, mounts: Mapping[str, str], deps: set[str]) -> str:
        """Rewrite the paths and addresses in one env value or argument."""
        mapped = rewrite_path(value, mounts)
        if mapped is not None:
            return mapped
        bare = self._BARE_PORT.match(value)
        if bare:
            return f"{LOOPBACK}:{self.ports(pod, int(bare.group(1)))}"
        value = self._ANY_HOST.sub(
            lambda m: f"{LOOPBACK}:{self.ports(pod, int(m.group(2)))}", value
        )
        if self._host_re is not None:
            value = self._host_re.sub(lambda m: self._service_ref(m, value, pod, deps), value)
        return value

    def _service_ref(self, m: re.Match[str], value: str, pod: str, deps: set[str]) -> str:
        table = self.hosts[m.group(1)]
        if m.group(2) is not None:
            port = int(m.group(2))
        else:
            scheme = self._SCHEME.search(value[: m.start()])
            port = _SCHEME_PORTS.get(scheme.group(1), -1) if scheme else -1
        if port not in table:
            return m.group(0)  # not a Service port (or a bare name): leave it alone
        target_pod, cport = table[port]
        if target_pod != pod:
            deps.add(target_pod)
        return f"{LOOPBACK}:{self.ports(target_pod, cport)}"

    def rewrite_args(
        self,
        pod: str,
        words: Sequence[str],
        mounts: Mapping[str, str],
        deps: set[str],
        program_is_redis: bool,
    ) -> list[str]:
        """A container's arguments: ``--port N`` gets the local port, ``--bind`` loopback."""
        out: list[str] = []
        for i, word in enumerate(words):
            prev = words[i - 1] if i else ""
            if prev == "--port" and word.isdigit():
                out.append(str(self.ports(pod, int(word))))
            elif word.startswith("--port=") and word[7:].isdigit():
                out.append(f"--port={self.ports(pod, int(word[7:]))}")
            elif prev == "--bind":
                out.append(LOOPBACK)
            else:
                out.append(self.rewrite(pod, word, mounts, deps))
        if program_is_redis and "--bind" not in words:
            out += ["--bind", LOOPBACK]
        return out

    def rewrite_peers(self, pod: str, value: str, port: int, mounts: Mapping[str, str]) -> str:
        """A comma-separated peer list: each bare Service name (or pod DNS name) becomes the
        ``http://127.0.0.1:<local port>`` URL of every pod its A records name, on container
        port ``port``; any other item is rewritten as ``rewrite`` does. Peers are not start
        dependencies: each MTA is every other's peer, and a peer not up yet is skipped."""
        items = []
        for item in value.split(","):
            name = item.strip()
            if name in self.members:
                items += [f"http://{LOOPBACK}:{self.ports(p, port)}" for p in self.members[name]]
            elif name:
                items.append(self.rewrite(pod, name, mounts, set()))
        return ",".join(items)


def rewrite_path(value: str, mounts: Mapping[str, str]) -> str | None:
    """``value`` (or the part after ``=`` of a ``--x=/path``) mapped into the local mounts.

    mounts: container mountPath (normalized) -> local directory.
    Returns None when the value is not an absolute path under a mountPath.
    """
    prefix, sep, path = value.partition("=")
    if not sep or not value.startswith("-"):
        prefix, sep, path = "", "", value
    if not path.startswith("/"):
        return None
    norm = posixpath.normpath(path)
    for mount in sorted(mounts, key=len, reverse=True):
        if norm == mount or norm.startswith(mount.rstrip("/") + "/"):
            rest = norm[len(mount) :].lstrip("/")
            local = mounts[mount] + ("/" + rest if rest else "")
            if path.endswith("/") and not local.endswith("/"):
                local += "/"
            return f"{prefix}{sep}{local}"
    return None
