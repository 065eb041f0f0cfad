"""Rendered Helm manifests -> local process specs, for ``nimbus cluster up`` (pure: no I/O).

Exports:
    translate(manifests, *, workdir, namespace, allocate_port, executables) -> Plan
    Plan, ProcessSpec, FileSpec, DirSpec     frozen results
    TranslateError                           a manifest that cannot run locally
    DEFAULT_EXECUTABLES                      container command -> local argv prefix

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
  this way are its ``depends_on`` (they start, and get ready, first).

Not translated: bare port numbers elsewhere, addresses inside ConfigMap/Secret file contents,
initContainers, sidecar lifecycle hooks, exec probes (treated as no probe), Jobs, DaemonSets,
Helm hooks and test pods.
"""

from __future__ import annotations

import base64
import posixpath
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

__all__ = ["translate", "Plan", "ProcessSpec", "FileSpec", "DirSpec", "TranslateError",
           "DEFAULT_EXECUTABLES", "IMAGE_ENTRYPOINTS"]

LOOPBACK = "127.0.0.1"

#: Container command (basename) -> local argv prefix.
DEFAULT_EXECUTABLES: Mapping[str, tuple[str, ...]] = {
    "nimbus": (sys.executable, "-m", "engine.cli"),
    "redis-server": ("redis-server",),
}
#: Image repository basename -> its ENTRYPOINT, for containers without ``command``; any other
#: image is the Nimbus image, whose ENTRYPOINT is ``nimbus`` (see the Dockerfile).
IMAGE_ENTRYPOINTS: Mapping[str, tuple[str, ...]] = {"redis": ("redis-server",)}
_DEFAULT_ENTRYPOINT = ("nimbus",)

_SCHEME_PORTS = {"http": 80, "https": 443, "redis": 6379, "rediss": 6379, "smtp": 25}
_WORKLOADS = ("StatefulSet", "Deployment")
_EPHEMERAL = ("configMap", "secret", "emptyDir", "projected", "downwardAPI")


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
    name: str                        # the pod name; "<pod>/<container>" in multi-container pods
    argv: tuple[str, ...]
    env: Mapping[str, str]           # the container's env only (rewritten)
    cwd: str
    ports: Mapping[str, int]         # container port name (or number) -> local port
    readiness: tuple[str, Any]       # ("http", url) | ("tcp", port) | ("none", None)
    pod: str = ""
    container: str = ""
    workload: str = ""               # "StatefulSet/<name>"
    role: str = ""                   # nimbus subcommand (mta, tsa, sink), else container name
    depends_on: tuple[str, ...] = ()  # pods whose Services this process references
    dirs: tuple[DirSpec, ...] = ()
    files: tuple[FileSpec, ...] = ()
    grace: float = 30.0              # terminationGracePeriodSeconds


@dataclass(frozen=True)
class Plan:
    """Everything to run: specs in start order, Service addresses, the HTTP credentials."""
    specs: tuple[ProcessSpec, ...]
    services: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # svc -> port -> addr
    credentials: tuple[str, str] | None = None

    def waves(self) -> list[list[ProcessSpec]]:
        """Specs grouped so each group only depends on earlier groups (a cycle: one group)."""
        remaining, done, out = list(self.specs), set(), []
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
class _Pod:
    name: str
    kind: str
    workload: str
    labels: Mapping[str, str]
    spec: Mapping[str, Any]
    claims: tuple[str, ...]          # volumeClaimTemplates names
    headless: str                    # StatefulSet serviceName ("" for Deployments)


class _Ports:
    """(pod, container port) -> local port, allocated on first use."""

    def __init__(self, allocate: Callable[[], int]) -> None:
        self._allocate = allocate
        self.local: dict[tuple[str, int], int] = {}

    def __call__(self, pod: str, port: int) -> int:
        if (pod, port) not in self.local:
            self.local[(pod, port)] = self._allocate()
        return self.local[(pod, port)]


def _decode_secret(doc: Mapping[str, Any]) -> dict[str, bytes]:
    out = {k: base64.b64decode(v or "") for k, v in (doc.get("data") or {}).items()}
    out.update({k: str(v).encode() for k, v in (doc.get("stringData") or {}).items()})
    return out


def _decode_configmap(doc: Mapping[str, Any]) -> dict[str, bytes]:
    out = {k: str(v).encode() for k, v in (doc.get("data") or {}).items()}
    out.update({k: base64.b64decode(v or "") for k, v in (doc.get("binaryData") or {}).items()})
    return out


def _pods(manifests: Iterable[Mapping[str, Any]]) -> list[_Pod]:
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
        claims = tuple((c.get("metadata") or {}).get("name", "")
                       for c in spec.get("volumeClaimTemplates") or [])
        for i in range(replicas):
            pods.append(_Pod(name=f"{meta['name']}-{i}", kind=doc["kind"],
                             workload=f"{doc['kind']}/{meta['name']}",
                             labels=(template.get("metadata") or {}).get("labels") or {},
                             spec=template.get("spec") or {}, claims=claims,
                             headless=spec.get("serviceName", "") if doc["kind"] == "StatefulSet"
                             else ""))
    return pods


def _container_port(pod: _Pod, port: Any, container: Mapping[str, Any] | None = None) -> int:
    """A numeric port, or a named one looked up in the container's (else the pod's) ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    containers = [container] if container is not None else pod.spec.get("containers") or []
    for c in containers:
        for p in c.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
    raise TranslateError(f"pod {pod.name}: no container port named {port!r}")


class _Translator:
    def __init__(self, manifests: Sequence[Mapping[str, Any]], workdir: str, namespace: str,
                 allocate_port: Callable[[], int], executables: Mapping[str, Sequence[str]]
                 ) -> None:
        self.workdir = workdir
        self.namespace = namespace
        self.executables = executables
        self.ports = _Ports(allocate_port)
        self.secrets = {d["metadata"]["name"]: _decode_secret(d)
                        for d in manifests if d.get("kind") == "Secret"}
        self.configmaps = {d["metadata"]["name"]: _decode_configmap(d)
                           for d in manifests if d.get("kind") == "ConfigMap"}
        self.pods = _pods(manifests)
        for pod in self.pods:  # declared ports first, so their local ports come in order
            for c in pod.spec.get("containers") or []:
                for p in c.get("ports") or []:
                    self.ports(pod.name, int(p["containerPort"]))
        self.hosts: dict[str, dict[int, tuple[str, int]]] = {}  # DNS name -> port -> target
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
        targets = [p for p in self.pods
                   if all(p.labels.get(k) == v for k, v in selector.items())]
        if not targets:
            return
        table: dict[int, tuple[str, int]] = {}
        shown: dict[str, str] = {}
        per_pod: dict[str, dict[int, tuple[str, int]]] = {p.name: {} for p in targets}
        for sp in spec.get("ports") or []:
            port = int(sp["port"])
            target = sp.get("targetPort", port)
            for i, pod in enumerate(targets):
                cport = _container_port(pod, target)
                per_pod[pod.name][port] = (pod.name, cport)
                if i == 0:
                    table[port] = (pod.name, cport)
                    shown[str(sp.get("name") or port)] = f"{LOOPBACK}:{self.ports(pod.name, cport)}"
        for dns in self._dns_names(name):
            self.hosts[dns] = table
        for pod in targets:  # a StatefulSet pod's own DNS name under its governing Service
            if pod.headless == name:
                for dns in self._dns_names(name):
                    self.hosts[f"{pod.name}.{dns}"] = per_pod[pod.name]
        self.services[name] = shown

    def _compile_hosts(self) -> re.Pattern[str] | None:
        if not self.hosts:
            return None
        names = "|".join(re.escape(h) for h in sorted(self.hosts, key=len, reverse=True))
        return re.compile(rf"(?<![\w.-])({names})(?![\w-]|\.\w)(?::(\d+))?")

    # -- rewriting --------------------------------------------------------------------------

    _ANY_HOST = re.compile(r"(?<![\w.:\]-])(0\.0\.0\.0|\[::\]|\*|localhost|127\.0\.0\.1|\[::1\])"
                           r":(\d+)(?!\d)")
    _BARE_PORT = re.compile(r"^:(\d+)$")
    _SCHEME = re.compile(r"([a-z][a-z0-9+.-]*)://(?:[^@/\s]*@)?$")

    def rewrite(self, pod: str, value: str, mounts: Mapping[str, str], deps: set[str]) -> str:
        """Rewrite the paths and addresses in one env value or argument."""
        mapped = self._rewrite_path(value, mounts)
        if mapped is not None:
            return mapped
        bare = self._BARE_PORT.match(value)
        if bare:
            return f"{LOOPBACK}:{self.ports(pod, int(bare.group(1)))}"
        value = self._ANY_HOST.sub(
            lambda m: f"{LOOPBACK}:{self.ports(pod, int(m.group(2)))}", value)
        if self._host_re is not None:
            value = self._host_re.sub(lambda m: self._service_ref(m, value, pod, deps), value)
        return value

    def _service_ref(self, m: re.Match[str], value: str, pod: str, deps: set[str]) -> str:
        table = self.hosts[m.group(1)]
        if m.group(2) is not None:
            port = int(m.group(2))
        else:
            scheme = self._SCHEME.search(value[:m.start()])
            port = _SCHEME_PORTS.get(scheme.group(1), -1) if scheme else -1
        if port not in table:
            return m.group(0)  # not a Service port (or a bare name): leave it alone
        target_pod, cport = table[port]
        if target_pod != pod:
            deps.add(target_pod)
        return f"{LOOPBACK}:{self.ports(target_pod, cport)}"

    @staticmethod
    def _rewrite_path(value: str, mounts: Mapping[str, str]) -> str | None:
        prefix, sep, path = value.partition("=")
        if not sep or not value.startswith("-"):
            prefix, sep, path = "", "", value
        if not path.startswith("/"):
            return None
        norm = posixpath.normpath(path)
        for mount in sorted(mounts, key=len, reverse=True):
            if norm == mount or norm.startswith(mount.rstrip("/") + "/"):
                rest = norm[len(mount):].lstrip("/")
                local = mounts[mount] + ("/" + rest if rest else "")
                if path.endswith("/") and not local.endswith("/"):
                    local += "/"
                return f"{prefix}{sep}{local}"
        return None

    # -- pods -------------------------------------------------------------------------------

    def _volume_files(self, pod: _Pod, vol: Mapping[str, Any], root: str) -> list[FileSpec]:
        sources: list[tuple[str, Mapping[str, Any]]] = []
        for kind in ("configMap", "secret"):
            if kind in vol:
                sources.append((kind, vol[kind]))
        for src in (vol.get("projected") or {}).get("sources") or []:
            for kind in ("configMap", "secret"):
                if kind in src:
                    sources.append((kind, src[kind]))
        default_mode = (vol.get("configMap") or vol.get("secret") or vol.get("projected")
                        or {}).get("defaultMode", 0o644)
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
                    f"objects from; use values that make the chart create it)")
            data = store[name]
            items = ref.get("items") or [{"key": k, "path": k} for k in sorted(data)]
            for item in items:
                if item["key"] not in data:
                    if ref.get("optional"):
                        continue
                    raise TranslateError(f"pod {pod.name}: {kind} {name!r} has no key "
                                         f"{item['key']!r}")
                files.append(FileSpec(path=posixpath.join(root, item["path"]),
                                      content=data[item["key"]],
                                      mode=int(item.get("mode", default_mode))))
        return files

    def _env(self, pod: _Pod, container: Mapping[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for src in container.get("envFrom") or []:
            prefix = src.get("prefix", "")
            for kind, store in (("configMapRef", self.configmaps), ("secretRef", self.secrets)):
                if kind in src:
                    name = src[kind].get("name")
                    if name not in store and not src[kind].get("optional"):
                        raise TranslateError(f"pod {pod.name}: envFrom {kind} {name!r} is not "
                                             f"rendered by the chart")
                    for k, v in (store.get(name) or {}).items():
                        env[prefix + k] = v.decode()
        for item in container.get("env") or []:
            value = self._env_value(pod, item, env)
            if value is not None:
                env[item["name"]] = value
        return env

    def _env_value(self, pod: _Pod, item: Mapping[str, Any], env: Mapping[str, str]
                   ) -> str | None:
        if "valueFrom" not in item:
            return _expand(str(item.get("value", "")), env)
        source = item["valueFrom"]
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            simple = {"metadata.name": pod.name, "metadata.namespace": self.namespace,
                      "status.podIP": LOOPBACK, "status.hostIP": LOOPBACK,
                      "status.podIPs": LOOPBACK, "spec.nodeName": "localhost",
                      "spec.serviceAccountName": pod.spec.get("serviceAccountName", "default")}
            if path in simple:
                return simple[path]
            m = re.fullmatch(r"metadata\.labels\['(.+)'\]", path)
            if m:
                return pod.labels.get(m.group(1), "")
            raise TranslateError(f"pod {pod.name}: env {item['name']}: fieldRef {path!r} "
                                 f"is not supported locally")
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
                        f"{what} {ref.get('name')!r}, which the chart does not render")
                return data[ref["key"]].decode()
        return None  # resourceFieldRef: no local meaning

    def _argv(self, pod: _Pod, container: Mapping[str, Any], env: Mapping[str, str]
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
                f"has no local equivalent (known: {', '.join(sorted(self.executables))})")
        words = command[1:] + args
        if program == "nimbus":
            role = next((w for w in words if not w.startswith("-")), "")
        else:
            role = "redis" if program == "redis-server" else str(container.get("name", ""))
        return tuple(self.executables[program]), words, role

    def _rewrite_args(self, pod: str, words: Sequence[str], mounts: Mapping[str, str],
                      deps: set[str], program_is_redis: bool) -> list[str]:
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

    def _readiness(self, pod: _Pod, container: Mapping[str, Any]) -> tuple[str, Any]:
        probe = container.get("readinessProbe") or {}
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = self.ports(pod.name, _container_port(pod, get["port"], container))
            scheme = str(get.get("scheme", "HTTP")).lower()
            path = get.get("path", "/")
            return ("http", f"{scheme}://{LOOPBACK}:{port}{path}")
        for kind in ("tcpSocket", "grpc"):
            if kind in probe:
                return ("tcp", self.ports(pod.name, _container_port(pod, probe[kind]["port"],
                                                                    container)))
        return ("none", None)

    def translate_pod(self, pod: _Pod) -> list[ProcessSpec]:
        root = posixpath.join(self.workdir, pod.name)
        containers = pod.spec.get("containers") or []
        volumes = {v["name"]: v for v in pod.spec.get("volumes") or []}
        all_mounts = [m for c in containers for m in c.get("volumeMounts") or []]
        vol_dirs: dict[str, str] = {}  # a volume lives at its first whole (not subPath) mount
        for m in sorted(all_mounts, key=lambda m: bool(m.get("subPath"))):
            if m["name"] not in vol_dirs:
                vol_dirs[m["name"]] = (
                    posixpath.join(root, ".volumes", m["name"]) if m.get("subPath")
                    else posixpath.join(root, posixpath.normpath(m["mountPath"]).lstrip("/")))
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
                mounts[posixpath.normpath(m["mountPath"])] = (posixpath.join(local, sub) if sub
                                                              else local)
            mounts_by_container.append(mounts)
        dirs.insert(0, DirSpec(root, wipe=False))
        specs = []
        for container, mounts in zip(containers, mounts_by_container):
            deps: set[str] = set()
            env = self._env(pod, container)
            head, words, role = self._argv(pod, container, env)
            words = self._rewrite_args(pod.name, words, mounts, deps, role == "redis")
            env = {k: self.rewrite(pod.name, v, mounts, deps) for k, v in env.items()}
            cports = {str(p.get("name") or p["containerPort"]):
                      self.ports(pod.name, int(p["containerPort"]))
                      for p in container.get("ports") or []}
            cwd = container.get("workingDir")
            cwd = self._rewrite_path(cwd, mounts) if cwd else None
            name = pod.name if len(containers) == 1 else f"{pod.name}/{container['name']}"
            specs.append(ProcessSpec(
                name=name, argv=(*head, *words), env=env, cwd=cwd or root, ports=cports,
                readiness=self._readiness(pod, container), pod=pod.name,
                container=str(container.get("name", "")), workload=pod.workload, role=role,
                depends_on=tuple(sorted(deps)), dirs=tuple(dirs) if not specs else (),
                files=tuple(files) if not specs else (),
                grace=float(pod.spec.get("terminationGracePeriodSeconds", 30))))
        return specs


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion (``$$`` escapes; unknown references stay)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def _credentials(specs: Sequence[ProcessSpec]) -> tuple[str, str] | None:
    """The first user of the first process's NIMBUS_HTTP_AUTH_DIR, as materialized."""
    files = {f.path: f for s in specs for f in s.files}
    for spec in specs:
        auth_dir = spec.env.get("NIMBUS_HTTP_AUTH_DIR")
        if not auth_dir:
            continue
        users = sorted((p, f) for p, f in files.items() if posixpath.dirname(p) == auth_dir
                       and not posixpath.basename(p).startswith("."))
        if users:
            path, f = users[0]
            return posixpath.basename(path), f.content.decode().rstrip("\r\n")
    return None


def translate(manifests: Sequence[Mapping[str, Any]], *, workdir: str, namespace: str = "default",
              allocate_port: Callable[[], int],
              executables: Mapping[str, Sequence[str]] = DEFAULT_EXECUTABLES) -> Plan:
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
