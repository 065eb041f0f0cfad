"""Loading a policy directory into a Registry.

Exports:
    PolicyApi        the ``nimbus`` object a policy's ``register(nimbus)`` receives
    PolicyServices   what the node lends a policy: its settings and MX resolver
    load_policy(policy_dir, timeout, on_dispatch, services, executor) -> Registry

A policy directory holds ``init.py`` defining ``register(nimbus)``, which registers
handlers explicitly::

    def register(nimbus):
        @nimbus.on("get_queue_config", inline=True)  # a table lookup: never blocks
        def queue_config(domain, tenant, campaign, routing_domain):
            return nimbus.QueueConfig(retry_interval=nimbus.duration("5m"))

Plain handlers run in the node's policy thread pool unless registered ``inline=True``
(engine/policy/events.py says when that is right). A directory without ``init.py`` is a
policy with no handlers: built-in defaults apply.
Every load builds a fresh Registry, so a reload that fails leaves the old one running.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn, Protocol

from engine.config.settings import ConfigError, Settings
from engine.config.units import parse_duration, parse_size
from engine.policy import egress, queue_config
from engine.policy.events import PolicyLoadError, Registry, reject
from engine.policy.listener_domain import ListenerDomain as _ListenerDomain
from engine.policy.warmup import WarmupSchedule

__all__ = ["PolicyApi", "PolicyServices", "load_policy"]


class _MxLookup(Protocol):
    # The answer is a MailExchanger; delivery sits above policy in the layers, so the
    # type cannot be named here and a policy just reads its attributes.
    async def resolve_mx(self, domain: str) -> object: ...


class PolicyServices(Protocol):
    """The node's shared parts a policy may use (the Node itself provides them)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def resolver(self) -> _MxLookup: ...


_load_counter = itertools.count()


class PolicyApi:
    """What a policy sees as ``nimbus``: registration, records to return, helpers."""

    QueueConfig = queue_config.QueueConfig
    EgressPathConfig = egress.EgressPathConfig
    EgressSource = egress.EgressSource
    EgressPool = egress.EgressPool
    TlsMode = egress.TlsMode
    KeySource = egress.KeySource
    ListenerDomain = _ListenerDomain

    def __init__(
        self, registry: Registry, policy_dir: Path, services: PolicyServices | None = None
    ) -> None:
        self._registry = registry
        self.policy_dir = policy_dir
        self._services = services

    @property
    def settings(self) -> Settings | None:
        """The node's Settings (None under ``nimbus validate``)."""
        return None if self._services is None else self._services.settings

    def path(self, name: str | Path) -> Path:
        """A file name relative to the policy directory (absolute paths pass through)."""
        p = Path(name)
        return p if p.is_absolute() else self.policy_dir / p

    async def resolve_mx(self, domain: str) -> object:
        """The node's cached MX lookup (``MailExchanger``); raises MxError on failure."""
        if self._services is None:
            raise RuntimeError("no resolver: MX lookups are not available here")
        return await self._services.resolver.resolve_mx(domain)

    def configure_log_hook(
        self, *, name: str, url: str, record_types: list[str] | None = None, **options: Any
    ) -> None:
        """POST log records (JSON arrays) to ``url``: KumoMTA's webhook log hooks. Options:
        batch_size, max_latency, headers, timeout. Hooks are read when the node starts."""
        from engine.policy.log_hook import LogHook

        self._registry.log_hooks.append(
            LogHook(
                name=name,
                url=url,
                record_types=None if record_types is None else frozenset(record_types),
                **options,
            )
        )

    def configure_bounce_classifier(self, files: list[str | Path]) -> None:
        """Classify Bounce/TransientFailure/Expiration/Rejection records with these rule files."""
        from engine.policy.helpers.bounce import BounceClassifier

        self._registry.bounce_classifier = BounceClassifier.load([self.path(f) for f in files])

    def configure_warmup(self, schedules: Mapping[str, WarmupSchedule]) -> None:
        """Limit these egress sources by their warm-up schedules (source name -> schedule,
        e.g. ``SourcesHelper.warmup``): routing skips a source whose window is used up."""
        for name, schedule in schedules.items():
            if not isinstance(schedule, WarmupSchedule) or schedule.source != name:
                raise TypeError(f"configure_warmup: {name!r} must map to its WarmupSchedule")
        self._registry.warmup = MappingProxyType(dict(schedules))

    def on(
        self, name: str, *, inline: bool = False
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Register the decorated function as a handler of event ``name``.

        inline: run this plain function on the loop instead of a worker thread; only for
            handlers that never block (a timeout can only be noticed after they return).
        """
        return self._registry.on(name, inline=inline)

    @staticmethod
    def reject(code: int, text: str) -> NoReturn:
        """Stop the current transaction with exactly ``code text``."""
        reject(code, text)

    @staticmethod
    def duration(text: str) -> float:
        return parse_duration(text)

    @staticmethod
    def size(text: str) -> int:
        return parse_size(text)


def _evict_modules(directory: Path) -> None:
    """Forget modules imported from the policy directory, so a reload sees edited files."""
    root = str(directory.resolve())
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and str(Path(path).resolve()).startswith(root + "/"):
            del sys.modules[name]


def load_policy(
    policy_dir: str | Path,
    *,
    timeout: float = 5.0,
    on_dispatch: Callable[[str, float], None] | None = None,
    services: PolicyServices | None = None,
    executor: Executor | None = None,
) -> Registry:
    """Import ``<policy_dir>/init.py`` and let it register its handlers.

    services: the node's shared parts a policy may use (``resolver``, ``settings``), or
        None (``nimbus validate``).
    executor: the thread pool plain handlers run in (None: the loop's default executor).
    Raises ConfigError (naming file, table and key) when a helper's TOML is wrong, and
    PolicyLoadError naming the file when the directory is missing, the module fails to
    import, ``register`` is missing, or a registration is invalid.
    """
    directory = Path(policy_dir)
    registry = Registry(timeout=timeout, on_dispatch=on_dispatch, executor=executor)
    if not directory.is_dir():
        raise PolicyLoadError(f"{directory}: policy directory does not exist")
    init = directory / "init.py"
    if not init.exists():
        return registry
    module_name = f"nimbus_policy_{next(_load_counter)}"
    spec = importlib.util.spec_from_file_location(module_name, init)
    if spec is None or spec.loader is None:
        raise PolicyLoadError(f"{init}: cannot be loaded as a Python module")
    _evict_modules(directory)
    module = importlib.util.module_from_spec(spec)
    # Registered like any imported module: dataclasses and pickling look modules up there.
    sys.modules[module_name] = module
    sys.path.insert(0, str(directory))  # so init.py can import its sibling modules
    loaded = False
    try:
        spec.loader.exec_module(module)
        register = getattr(module, "register", None)
        if not callable(register):
            raise PolicyLoadError(f"{init}: defines no register(nimbus) function")
        register(PolicyApi(registry, directory, services))
        loaded = True
    except ConfigError:
        raise  # already names file, table and key
    except PolicyLoadError as exc:
        if str(init) in str(exc):
            raise
        raise PolicyLoadError(f"{init}: {exc}") from None
    except Exception as exc:
        raise PolicyLoadError(f"{init}: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(str(directory))
        if not loaded:
            sys.modules.pop(module_name, None)
    return registry
