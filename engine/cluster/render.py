"""Rendered Helm manifests -> local process specs, for ``nimbus cluster up`` (pure: no I/O).

Exports:
    translate(manifests, *, workdir, namespace, allocate_port, executables) -> Plan
    DEFAULT_EXECUTABLES                      container command -> local argv prefix
    IMAGE_ENTRYPOINTS                        image -> ENTRYPOINT, for containers without command

This module resolves each pod's env, volumes, command and probes; the records are
engine.cluster.plan and the address/path rewriting is engine.cluster.rewrite.

Each pod of a StatefulSet (``<sts>-0..N-1``) or Deployment (``<deploy>-0..N-1``, replicas
honoured) becomes one process per container, running the container's own ``command`` +
``args`` with its own ``env``. Only addresses and paths are rewritten:

* volumes are local directories ``<workdir>/<pod>/<mountPath>`` (ConfigMap and Secret volumes
  become files; emptyDir, ConfigMap and Secret directories start empty, persistent claims are
  kept), and any env value or argument that is a path under a mountPath (also ``--x=/path``)
  points into them;
* a listen address ``0.0.0.0:P`` (also ``[::]:P``, ``:P``, ``localhost:P``, ``127.0.0.1:P``)
  becomes ``127.0.0.1:<free port>``, one free port per (pod, container port); so does the
  value after ``--port``;
* a Service name, bare or qualified (``<svc>``, ``<svc>.<ns>``, ``<svc>.<ns>.svc[.cluster.local]``,
  ``<pod>.<headless svc>...``) with a Service port (``svc:6379``, ``http://svc:8008``,
  ``redis://svc:6379/0``; a URL without a port uses the scheme's default) becomes
  ``127.0.0.1:<local port>`` of the Service's target port on the FIRST pod it selects (the
  ClusterIP rule: a Service over N MTA pods reaches ``<sts>-0``). The pods a process reaches
  this way are its ``depends_on`` (they start, and get ready, first);
* ``NIMBUS_CLUSTER_PEERS``: a headless Service name in it becomes the HTTP URL of every pod
  it selects, on the node's own ``NIMBUS_HTTP_LISTEN`` port (``AddressRewriter.rewrite_peers``).

Not translated: bare port numbers elsewhere, addresses inside ConfigMap/Secret file contents,
initContainers, sidecar lifecycle hooks, exec probes (treated as no probe), Jobs, DaemonSets,
Helm hooks and test pods.
"""

from __future__ import annotations

import base64
import posixpath
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from engine.cluster.plan import (
    LOOPBACK,
    DirSpec,
    FileSpec,
    Plan,
    Pod,
    ProcessSpec,
    TranslateError,
    container_port,
)
from engine.cluster.rewrite import AddressRewriter, Ports, rewrite_path

__all__ = ["translate", "DEFAULT_EXECUTABLES", "IMAGE_ENTRYPOINTS"]

#: Container command (basename) -> local argv prefix.
DEFAULT_EXECUTABLES: Mapping[str, tuple[str, ...]] = {
    "nimbus": (sys.executable, "-m", "engine.cli"),
    "redis-server": ("redis-server",),
}
#: Image repository basename -> its ENTRYPOINT, for containers without ``command``; any other
#: image is the Nimbus image, whose ENTRYPOINT is ``nimbus`` (see the Dockerfile).
IMAGE_ENTRYPOINTS: Mapping[str, tuple[str, ...]] = {"redis": ("redis-server",)}
_DEFAULT_ENTRYPOINT = ("nimbus",)

_WORKLOADS = ("StatefulSet", "Deployment")
_EPHEMERAL = ("configMap", "secret", "emptyDir", "projected", "downwardAPI")


def _decode_secret(doc: Mapping[str, Any]) -> dict[str, bytes]:
    out = {k: base64.b64decode(v or "") for k, v in (doc.get("data") or {}).items()}
    out.update({k: str(v).encode() for k, v in (doc.get("stringData") or {}).items()})
    return out


def _decode_configmap(doc: Mapping[str, Any]) -> dict[str, bytes]:
    out = {k: str(v).encode() for k, v in (doc.get("data") or {}).items()}
    out.update({k: base64.b64decode(v or "") for k, v in (doc.get("binaryData") or {}).items()})
    return out


def _pods(manifests: Iterable[Mapping[str, Any]]) -> list[Pod]:
    pods = []
    for doc in manifests:
        if doc.get("kind") not in _WORKLOADS:
            continue
        meta = doc.get("metadata") or {}
        if "helm.sh/hook" in (meta.get("annotations") or {}):
            continue
        spec = doc.get("spec") or {}
        template = spec.get("template") or {}
        replicas = spec.get("replicas", 1)
        replicas = 1 if replicas is None else int(replicas)
        claims = tuple(
            (c.get("metadata") or {}).get("name", "")
            for c in spec.get("volumeClaimTemplates") or []
        )
        for i in range(replicas):
            pods.append(
                Pod(
                    name=f"{meta['name']}-{i}",
                    kind=doc["kind"],
                    workload=f"{doc['kind']}/{meta['name']}",
                    labels=(template.get("metadata") or {}).get("labels") or {},
                    spec=template.get("spec") or {},
                    claims=claims,
                    headless=spec.get("serviceName", "") if doc["kind"] == "StatefulSet" else "",
                )
            )
    return pods


class _Translator:
    """One translation: the chart's Secrets, ConfigMaps and pods, and its port allocation."""

    def __init__(
        self,
        manifests: Sequence[Mapping[str, Any]],
        workdir: str,
        namespace: str,
        allocate_port: Callable[[], int],
        executables: Mapping[str, Sequence[str]],
    ) -> None:
        self.workdir = workdir
        self.namespace = namespace
        self.executables = executables
        self.ports = Ports(allocate_port)
        self.secrets = {
            d["metadata"]["name"]: _decode_secret(d) for d in manifests if d.get("kind") == "Secret"
        }
        self.configmaps = {
            d["metadata"]["name"]: _decode_configmap(d)
            for d in manifests
            if d.get("kind") == "ConfigMap"
        }
        self.pods = _pods(manifests)
        for pod in self.pods:  # declared ports first, so their local ports come in order
            for c in pod.spec.get("containers") or []:
                for p in c.get("ports") or []:
                    self.ports(pod.name, int(p["containerPort"]))
        self.addresses = AddressRewriter(manifests, self.pods, namespace, self.ports)
        self.services = self.addresses.services

    # -- pods -------------------------------------------------------------------------------

    def _volume_files(self, pod: Pod, vol: Mapping[str, Any], root: str) -> list[FileSpec]:
        sources: list[tuple[str, Mapping[str, Any]]] = []
        for kind in ("configMap", "secret"):
            if kind in vol:
                sources.append((kind, vol[kind]))
        for src in (vol.get("projected") or {}).get("sources") or []:
            for kind in ("configMap", "secret"):
                if kind in src:
                    sources.append((kind, src[kind]))
        default_mode = (
            vol.get("configMap") or vol.get("secret") or vol.get("projected") or {}
        ).get("defaultMode", 0o644)
        files = []
        for kind, ref in sources:
            name = ref.get("secretName") if kind == "secret" else ref.get("name")
            store = self.secrets if kind == "secret" else self.configmaps
            if name not in store:
                if ref.get("optional"):
                    continue
                raise TranslateError(
                    f"pod {pod.name}: volume {vol.get('name')!r} needs {kind} {name!r}, which the "
                    f"chart does not render (a local cluster has no cluster to read existing "
                    f"objects from; use values that make the chart create it)"
                )
            data = store[name]
            items = ref.get("items") or [{"key": k, "path": k} for k in sorted(data)]
            for item in items:
                if item["key"] not in data:
                    if ref.get("optional"):
                        continue
                    raise TranslateError(
                        f"pod {pod.name}: {kind} {name!r} has no key {item['key']!r}"
                    )
                files.append(
                    FileSpec(
                        path=posixpath.join(root, item["path"]),
                        content=data[item["key"]],
                        mode=int(item.get("mode", default_mode)),
                    )
                )
        return files

    def _env(self, pod: Pod, container: Mapping[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for src in container.get("envFrom") or []:
            prefix = src.get("prefix", "")
            for kind, store in (("configMapRef", self.configmaps), ("secretRef", self.secrets)):
                if kind in src:
                    name = src[kind].get("name")
                    if name not in store and not src[kind].get("optional"):
                        raise TranslateError(
                            f"pod {pod.name}: envFrom {kind} {name!r} is not rendered by the chart"
                        )
                    for k, v in (store.get(name) or {}).items():
                        env[prefix + k] = v.decode()
        for item in container.get("env") or []:
            value = self._env_value(pod, item, env)
            if value is not None:
                env[item["name"]] = value
        return env

    def _env_value(self, pod: Pod, item: Mapping[str, Any], env: Mapping[str, str]) -> str | None:
        if "valueFrom" not in item:
            return _expand(str(item.get("value", "")), env)
        source = item["valueFrom"]
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            simple = {
                "metadata.name": pod.name,
                "metadata.namespace": self.namespace,
                "status.podIP": LOOPBACK,
                "status.hostIP": LOOPBACK,
                "status.podIPs": LOOPBACK,
                "spec.nodeName": "localhost",
                "spec.serviceAccountName": pod.spec.get("serviceAccountName", "default"),
            }
            if path in simple:
                return simple[path]
            m = re.fullmatch(r"metadata\.labels\['(.+)'\]", path)
            if m:
                return pod.labels.get(m.group(1), "")
            raise TranslateError(
                f"pod {pod.name}: env {item['name']}: fieldRef {path!r} is not supported locally"
            )
        for kind, store in (("secretKeyRef", self.secrets), ("configMapKeyRef", self.configmaps)):
            if kind in source:
                ref = source[kind]
                data = store.get(ref.get("name"))
                if data is None or ref.get("key") not in data:
                    if ref.get("optional"):
                        return None
                    what = "Secret" if kind == "secretKeyRef" else "ConfigMap"
                    raise TranslateError(
                        f"pod {pod.name}: env {item['name']} needs key {ref.get('key')!r} of "
                        f"{what} {ref.get('name')!r}, which the chart does not render"
                    )
                return data[ref["key"]].decode()
        return None  # resourceFieldRef: no local meaning

    def _argv(
        self, pod: Pod, container: Mapping[str, Any], env: Mapping[str, str]
    ) -> tuple[tuple[str, ...], list[str], str]:
        """(local program prefix, its arguments, role) of a container."""
        command = [_expand(str(c), env) for c in container.get("command") or []]
        args = [_expand(str(a), env) for a in container.get("args") or []]
        if not command:
            repo = str(container.get("image", "")).split("@")[0]
            if ":" in repo.rsplit("/", 1)[-1]:
                repo = repo.rsplit(":", 1)[0]
            command = list(IMAGE_ENTRYPOINTS.get(repo.rsplit("/", 1)[-1], _DEFAULT_ENTRYPOINT))
        program = posixpath.basename(command[0])
        if program not in self.executables:
            raise TranslateError(
                f"pod {pod.name}: container {container.get('name')!r} runs {command[0]!r}, which "
                f"has no local equivalent (known: {', '.join(sorted(self.executables))})"
            )
        words = command[1:] + args
        if program == "nimbus":
            role = next((w for w in words if not w.startswith("-")), "")
        else:
            role = "redis" if program == "redis-server" else str(container.get("name", ""))
        return tuple(self.executables[program]), words, role

    def _readiness(self, pod: Pod, container: Mapping[str, Any]) -> tuple[str, Any]:
        probe = container.get("readinessProbe") or {}
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = self.ports(pod.name, container_port(pod, get["port"], container))
            scheme = str(get.get("scheme", "HTTP")).lower()
            path = get.get("path", "/")
            return ("http", f"{scheme}://{LOOPBACK}:{port}{path}")
        for kind in ("tcpSocket", "grpc"):
            if kind in probe:
                return (
                    "tcp",
                    self.ports(pod.name, container_port(pod, probe[kind]["port"], container)),
                )
        return ("none", None)

    def _volumes(
        self, pod: Pod, root: str, containers: Sequence[Mapping[str, Any]]
    ) -> tuple[list[DirSpec], list[FileSpec], list[dict[str, str]]]:
        """A pod's volume directories and files, and each container's mountPath -> local dir."""
        volumes = {v["name"]: v for v in pod.spec.get("volumes") or []}
        all_mounts = [m for c in containers for m in c.get("volumeMounts") or []]
        vol_dirs: dict[str, str] = {}  # a volume lives at its first whole (not subPath) mount
        for m in sorted(all_mounts, key=lambda m: bool(m.get("subPath"))):
            if m["name"] not in vol_dirs:
                vol_dirs[m["name"]] = (
                    posixpath.join(root, ".volumes", m["name"])
                    if m.get("subPath")
                    else posixpath.join(root, posixpath.normpath(m["mountPath"]).lstrip("/"))
                )
        dirs: list[DirSpec] = []
        files: list[FileSpec] = []
        for name, local in vol_dirs.items():
            vol = volumes.get(name)
            if vol is None and name not in pod.claims:
                raise TranslateError(f"pod {pod.name}: volumeMount {name!r} has no volume")
            kind = next((k for k in (vol or {}) if k != "name"), "persistentVolumeClaim")
            dirs.append(DirSpec(local, wipe=kind in _EPHEMERAL))
            if vol is not None:
                files += self._volume_files(pod, vol, local)
        mounts_by_container: list[dict[str, str]] = []
        for container in containers:
            mounts: dict[str, str] = {}
            for m in container.get("volumeMounts") or []:
                sub = m.get("subPath", "")
                local = vol_dirs[m["name"]]
                mounts[posixpath.normpath(m["mountPath"])] = (
                    posixpath.join(local, sub) if sub else local
                )
            mounts_by_container.append(mounts)
        dirs.insert(0, DirSpec(root, wipe=False))
        return dirs, files, mounts_by_container

    def translate_pod(self, pod: Pod) -> list[ProcessSpec]:
        root = posixpath.join(self.workdir, pod.name)
        containers = pod.spec.get("containers") or []
        dirs, files, mounts_by_container = self._volumes(pod, root, containers)
        specs: list[ProcessSpec] = []
        for container, mounts in zip(containers, mounts_by_container, strict=False):
            deps: set[str] = set()
            env = self._env(pod, container)
            head, words, role = self._argv(pod, container, env)
            words = self.addresses.rewrite_args(pod.name, words, mounts, deps, role == "redis")
            peer_port = _listen_port(env.get("NIMBUS_HTTP_LISTEN", ""))
            env = {
                k: self.addresses.rewrite_peers(pod.name, v, peer_port, mounts)
                if k == "NIMBUS_CLUSTER_PEERS" and peer_port
                else self.addresses.rewrite(pod.name, v, mounts, deps)
                for k, v in env.items()
            }
            cports = {
                str(p.get("name") or p["containerPort"]): self.ports(
                    pod.name, int(p["containerPort"])
                )
                for p in container.get("ports") or []
            }
            cwd = container.get("workingDir")
            cwd = rewrite_path(cwd, mounts) if cwd else None
            name = pod.name if len(containers) == 1 else f"{pod.name}/{container['name']}"
            specs.append(
                ProcessSpec(
                    name=name,
                    argv=(*head, *words),
                    env=env,
                    cwd=cwd or root,
                    ports=cports,
                    readiness=self._readiness(pod, container),
                    pod=pod.name,
                    container=str(container.get("name", "")),
                    workload=pod.workload,
                    role=role,
                    depends_on=tuple(sorted(deps)),
                    dirs=tuple(dirs) if not specs else (),
                    files=tuple(files) if not specs else (),
                    grace=float(pod.spec.get("terminationGracePeriodSeconds", 30)),
                )
            )
        return specs


def _listen_port(listen: str) -> int | None:
    """The port of a ``host:port`` listen address (DNS peers are reached on it), else None."""
    port = listen.rpartition(":")[2]
    return int(port) if port.isdigit() else None


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion (``$$`` escapes; unknown references stay)."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        value,
    )


def _credentials(specs: Sequence[ProcessSpec]) -> tuple[str, str] | None:
    """The first user of the first process's NIMBUS_HTTP_AUTH_DIR, as materialized."""
    files = {f.path: f for s in specs for f in s.files}
    for spec in specs:
        auth_dir = spec.env.get("NIMBUS_HTTP_AUTH_DIR")
        if not auth_dir:
            continue
        users = sorted(
            (p, f)
            for p, f in files.items()
            if posixpath.dirname(p) == auth_dir and not posixpath.basename(p).startswith(".")
        )
        if users:
            path, f = users[0]
            return posixpath.basename(path), f.content.decode().rstrip("\r\n")
    return None


def translate(
    manifests: Sequence[Mapping[str, Any]],
    *,
    workdir: str,
    namespace: str = "default",
    allocate_port: Callable[[], int],
    executables: Mapping[str, Sequence[str]] = DEFAULT_EXECUTABLES,
) -> Plan:
    """Rendered manifests -> a Plan of local processes in start order.

    workdir: absolute directory under which each pod gets ``<workdir>/<pod>``.
    namespace: the release namespace (for qualified Service names).
    allocate_port: returns a free local port per call (each call a new one).
    executables: container command basename -> local argv prefix.
    Raises TranslateError naming the pod and the object it cannot run.
    """
    t = _Translator(manifests, workdir, namespace, allocate_port, executables)
    specs = [s for pod in t.pods for s in t.translate_pod(pod)]
    ordered = Plan(tuple(specs)).waves()
    specs = [s for wave in ordered for s in wave]
    return Plan(specs=tuple(specs), services=t.services, credentials=_credentials(specs))
