"""The queues.toml helper (KumoMTA ``assets/policy-extras/queue.lua``): tenant and
campaign from headers at reception, and layered queue configuration.

Exports:
    QueueHelper                   a loaded queues.toml
    QueueHelper.load(path) -> QueueHelper                    ConfigError names file/table/key
    QueueHelper.apply(msg) -> None                           reception: headers -> meta
    QueueHelper.queue_config(domain, tenant, campaign, routing_domain) -> QueueConfig
    QueueHelper.routing_domain(domain, tenant, campaign) -> str | None
    QueueHelper.egress_pools() -> frozenset[str]             pools named anywhere (to validate)
    QueueHelper.suppression(tenant) -> bool | None           the tenant's ``suppression`` option
    QueueHelper.overrides_suppression() -> bool              any tenant sets ``suppression``
    TenantBlock, QueueBlock       the parsed ``[tenant.*]`` and ``[queue.*]`` tables
    merge_queue_options(layers) -> dict                      later layers win, key by key (pure)
    parse_scheduling_header(text) -> dict                    KumoMTA's JSON scheduling header (pure)
    AUTH_META_KEYS                meta keys naming the sender's identity for ``require_authz``

File format (KumoMTA's)::

    scheduling_header = "X-Schedule"     # JSON msg:set_scheduling options
    tenant_header = "X-Tenant"           # tenant from this header ...
    remove_tenant_header = true          # ... then drop the header
    campaign_header = "X-Campaign"
    remove_campaign_header = true
    default_tenant = "default"           # when the header is absent
    [tenant.'t']                         # queue options + require_authz, overall_max_message_rate,
                                         # suppression = false (Nimbus: mail of this tenant
                                         # is not refused for the suppression list)
    [tenant.'t'.'campaign']              # overall_max_message_rate only
    [queue.default]                      # queue options (+ routing_domain)
    [queue.'dom']  [queue.'*.dom']  [queue.'dom'.'tenant']  [queue.'dom'.'tenant'.'campaign']

Inside a block a key is a queue option when it is one of ``QUEUE_OPTION_NAMES``,
a helper key (``routing_domain``, ``require_authz``, ``overall_max_message_rate``)
where that block allows it, a nested block when its value is a table, and an
error otherwise. Queue options merge in KumoMTA's order: default, domain,
tenant, domain+tenant, campaign. Domain keys match case-insensitively; a
``*.example.com`` key matches subdomains of example.com (``kumo.domain_map``).

Where KumoMTA would silently ignore a key (nested tables under ``[queue.default]``,
queue options under ``[tenant.'t'.'c']``, ``overall_max_message_rate`` in
``[queue.*]``) we refuse it instead. ``overall_max_message_rate`` in ``[tenant.*]``
is refused too (``key "overall_max_message_rate": not supported by Nimbus``): nothing
applies a rate between the scheduled and ready queues yet.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config.settings import ConfigError
from engine.policy.events import reject
from engine.policy.helpers import load_document, table_name
from engine.policy.message import PolicyMessage
from engine.policy.queue_config import QUEUE_OPTION_NAMES, QueueConfig, queue_config_from_options

__all__ = [
    "QueueHelper",
    "TenantBlock",
    "QueueBlock",
    "merge_queue_options",
    "parse_scheduling_header",
    "AUTH_META_KEYS",
]

_HEADER_KEYS: dict[str, type] = {
    "scheduling_header": str,
    "tenant_header": str,
    "remove_tenant_header": bool,
    "campaign_header": str,
    "remove_campaign_header": bool,
    "default_tenant": str,
}
# Meta keys naming the authenticated identity, in the order they are consulted:
# KumoMTA's SMTP AUTH ``authz_id``, then our HTTP injection's ``http_auth``.
AUTH_META_KEYS = ("authz_id", "http_auth", "authn_id")
_SCHEDULING_KEYS = frozenset({"first_attempt", "expires", "dow", "tz", "start", "end"})
_WINDOW_KEYS = ("dow", "tz", "start", "end")


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantBlock:
    """``[tenant.'t']``: queue options for every domain, and who may use the tenant.

    options: raw queue options (validated at load).
    require_authz: identities allowed to send as this tenant, or None for anyone.
    overall_max_message_rate: ThrottleSpec over all of the tenant's queues, or None.
    campaign_rates: campaign -> ThrottleSpec from ``[tenant.'t'.'campaign']``.
    suppression: ``false``: this tenant's mail is not refused for suppressed recipients
        (a Nimbus key: KumoMTA has no suppression list); None when not set.
    """

    options: Mapping[str, Any] = field(default_factory=dict)
    require_authz: tuple[str, ...] | None = None
    suppression: bool | None = None
    overall_max_message_rate: str | None = None
    campaign_rates: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueBlock:
    """``[queue.'dom']`` and its nested tenant and campaign blocks.

    options: raw queue options (validated at load).
    routing_domain: set as meta ``routing_domain`` at reception, or None.
    children: tenant blocks (under a domain) or campaign blocks (under a tenant).
    """

    options: Mapping[str, Any] = field(default_factory=dict)
    routing_domain: str | None = None
    children: Mapping[str, QueueBlock] = field(default_factory=dict)


def merge_queue_options(layers: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge option layers, least specific first; a later layer replaces a key whole."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    return merged


def parse_scheduling_header(text: str) -> dict[str, Any]:
    """Parse KumoMTA's scheduling header: a JSON object of ``msg:set_scheduling`` options.

    text: the header value, e.g. ``{"dow":"Mon,Wed","tz":"America/Phoenix",
        "start":"09:00:00","end":"17:00:00"}``.
    Returns the options dict. Raises ValueError saying what is wrong: not JSON,
    not an object, an unknown key, or only some of dow/tz/start/end.
    """
    try:
        options = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(options, dict):
        raise ValueError("expected a JSON object")
    unknown = sorted(set(options) - _SCHEDULING_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}")
    given = [k for k in _WINDOW_KEYS if options.get(k) is not None]
    if given and len(given) != len(_WINDOW_KEYS):
        raise ValueError("dow, tz, start and end must be given together")
    return options


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueHelper:
    """A loaded queues.toml (see the module docstring for the format).

    path: the file, named in errors. The header fields are the top-level keys.
    tenants: ``[tenant.*]`` by name. queues: ``[queue.*]`` by lowercased domain
    (or ``default``, or a ``*.suffix`` wildcard).
    """

    path: str
    scheduling_header: str | None = None
    tenant_header: str | None = None
    remove_tenant_header: bool = False
    campaign_header: str | None = None
    remove_campaign_header: bool = False
    default_tenant: str | None = None
    tenants: Mapping[str, TenantBlock] = field(default_factory=dict)
    queues: Mapping[str, QueueBlock] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> QueueHelper:
        """Read and validate a queues.toml (or .json); raises ConfigError naming file/table/key."""
        return cls.from_tree(load_document(path), path=str(path))

    @classmethod
    def from_tree(cls, tree: Mapping[str, Any], *, path: str) -> QueueHelper:
        """Validate an already-parsed document; ``path`` is used in error messages."""
        top: dict[str, Any] = {}
        tenants: dict[str, TenantBlock] = {}
        queues: dict[str, QueueBlock] = {}
        for key, value in tree.items():
            if key == "tenant":
                for name, body in _table(value, path, ("tenant",)).items():
                    tenants[name] = _parse_tenant(body, path, name)
            elif key == "queue":
                for name, body in _table(value, path, ("queue",)).items():
                    domain = name.lower()
                    if domain in queues:
                        raise ConfigError(
                            f"{path}: [queue] {name}: domain given twice "
                            f"(domain keys are case-insensitive)"
                        )
                    queues[domain] = _parse_queue(body, path, ("queue", name))
            elif key in _HEADER_KEYS:
                kind = _HEADER_KEYS[key]
                if not isinstance(value, kind) or (isinstance(value, str) and not value.strip()):
                    what = "true or false" if kind is bool else "a non-empty string"
                    raise ConfigError(f"{path}: {key}: expected {what}, got {value!r}")
                top[key] = value
            else:
                known = ", ".join(sorted([*_HEADER_KEYS, "tenant", "queue"]))
                raise ConfigError(f"{path}: {key}: unknown key (known keys: {known})")
        default = top.get("default_tenant")
        if default is not None and default not in tenants:
            raise ConfigError(
                f"{path}: default_tenant: tenant {default!r} has no "
                f"[{table_name('tenant', default)}] block"
            )
        return cls(path=path, tenants=tenants, queues=queues, **top)

    # -- reception -----------------------------------------------------------------

    def apply(self, msg: PolicyMessage) -> None:
        """Set meta ``tenant``/``campaign`` (and ``routing_domain``) from headers at reception.

        msg: an ``engine.policy.message.PolicyMessage``. Order is KumoMTA's: scheduling
        header, campaign header, tenant header (else ``default_tenant``).
        Raises Rejected 500 (via ``reject``) for an undefined tenant, a tenant whose
        ``require_authz`` the sender does not meet, or a malformed scheduling header.
        """
        if self.scheduling_header:
            self._import_scheduling(msg, self.scheduling_header)
        if self.campaign_header:
            campaign = msg.get_first_named_header_value(self.campaign_header)
            if campaign is not None:
                msg.set_meta("campaign", campaign)
                if self.remove_campaign_header:
                    msg.remove_all_named_headers(self.campaign_header)
        tenant, source = None, ""
        if self.tenant_header:
            tenant = msg.get_first_named_header_value(self.tenant_header)
            if tenant is not None:
                source = f"'{self.tenant_header}' header"
                if self.remove_tenant_header:
                    msg.remove_all_named_headers(self.tenant_header)
        if tenant is None and self.default_tenant is not None:
            tenant, source = self.default_tenant, "default_tenant option"
        if tenant is not None:
            self._check_tenant(msg, tenant, source)
            msg.set_meta("tenant", tenant)
        domain = str(msg.recipient()).rpartition("@")[2]
        tenant_meta, campaign_meta = msg.get_meta("tenant"), msg.get_meta("campaign")
        routing = self.routing_domain(
            domain,
            tenant_meta if isinstance(tenant_meta, str) else None,
            campaign_meta if isinstance(campaign_meta, str) else None,
        )
        if routing is not None:
            msg.set_meta("routing_domain", routing)

    def _check_tenant(self, msg: PolicyMessage, tenant: str, source: str) -> None:
        # KumoMTA rejects with a bare 500; we add RFC 3463 5.7.1 (delivery not authorized).
        block = self.tenants.get(tenant)
        if block is None:
            reject(
                500,
                f"5.7.1 tenant '{tenant}' specified by {source} "
                f"is not defined in your queue config",
            )
        elif block.require_authz is not None:
            ident = next((msg.get_meta(k) for k in AUTH_META_KEYS if msg.get_meta(k)), None)
            if ident is None:
                reject(500, f"5.7.1 tenant '{tenant}' requires authentication")
            elif ident not in block.require_authz:
                reject(
                    500, f"5.7.1 authz_id '{ident}' is not authorized to send as tenant '{tenant}'"
                )

    @staticmethod
    def _import_scheduling(msg: PolicyMessage, header: str) -> None:
        # KumoMTA: msg:import_scheduling_header(header, true) -- parse, apply, remove.
        # When PolicyMessage has set_scheduling we apply it; otherwise the options are
        # kept on meta ``x_scheduling`` for a later stage to apply.
        raw = msg.get_first_named_header_value(header)
        if raw is None:
            return
        try:
            options = parse_scheduling_header(raw)
            setter = getattr(msg, "set_scheduling", None)
            if setter is not None:
                setter(options)
            else:
                msg.set_meta("x_scheduling", options)
        except ValueError as exc:
            reject(500, f"5.6.0 invalid {header} header: {exc}")
        msg.remove_all_named_headers(header)

    # -- queue configuration ---------------------------------------------------------

    def _layers(
        self, domain: str, tenant: str | None, campaign: str | None
    ) -> list[QueueBlock | TenantBlock]:
        """The blocks that apply, least specific first (KumoMTA ``resolve_config``)."""
        layers: list[QueueBlock | TenantBlock] = []
        default = self.queues.get("default")
        if default is not None:
            layers.append(default)
        dom = self._domain_block(domain)
        if dom is not None:
            layers.append(dom)
        if tenant is not None and tenant in self.tenants:
            layers.append(self.tenants[tenant])
        dom_tenant = dom.children.get(tenant) if dom is not None and tenant is not None else None
        if dom_tenant is not None:
            layers.append(dom_tenant)
            if campaign is not None and campaign in dom_tenant.children:
                layers.append(dom_tenant.children[campaign])
        return layers

    def _domain_block(self, domain: str) -> QueueBlock | None:
        domain = domain.lower().rstrip(".")
        if domain in self.queues and domain != "default":
            return self.queues[domain]
        labels = domain.split(".")
        for i in range(1, len(labels)):
            wildcard = "*." + ".".join(labels[i:])
            if wildcard in self.queues:
                return self.queues[wildcard]
        return None

    def queue_options(
        self, domain: str, tenant: str | None, campaign: str | None
    ) -> dict[str, Any]:
        """The merged raw queue options for a scheduled queue (empty when nothing matches)."""
        return merge_queue_options(
            layer.options for layer in self._layers(domain, tenant, campaign)
        )

    def queue_config(
        self,
        domain: str,
        tenant: str | None,
        campaign: str | None,
        routing_domain: str | None = None,
    ) -> QueueConfig:
        """The ``get_queue_config`` answer for a scheduled queue.

        domain / tenant / campaign: the queue name's parts (None when absent).
        routing_domain: accepted for the event's signature; KumoMTA ignores it too.
        """
        where = f"{self.path}: [queue] for {domain!r}"
        return queue_config_from_options(self.queue_options(domain, tenant, campaign), where=where)

    def routing_domain(self, domain: str, tenant: str | None, campaign: str | None) -> str | None:
        """The most specific ``routing_domain`` among the matching ``[queue.*]`` blocks."""
        found = None
        for layer in self._layers(domain, tenant, campaign):
            if isinstance(layer, QueueBlock) and layer.routing_domain is not None:
                found = layer.routing_domain
        return found

    def suppression(self, tenant: str | None) -> bool | None:
        """The ``suppression`` option of ``[tenant.'<tenant>']`` (None: not set, or no
        such tenant); the answer for the ``should_suppress_recipient`` event."""
        block = self.tenants.get(tenant) if tenant is not None else None
        return block.suppression if block is not None else None

    def overrides_suppression(self) -> bool:
        """Does any tenant set ``suppression``? (Only then should a policy answer the
        event: with a handler, SMTP leaves the verdict to after DATA, when the tenant is
        known.)"""
        return any(b.suppression is not None for b in self.tenants.values())

    def egress_pools(self) -> frozenset[str]:
        """Every ``egress_pool`` named in the file (check them against sources.toml)."""
        found: set[str] = set()

        def walk(block: QueueBlock | TenantBlock) -> None:
            if "egress_pool" in block.options:
                found.add(block.options["egress_pool"])
            for child in getattr(block, "children", {}).values():
                walk(child)

        blocks: list[QueueBlock | TenantBlock] = [*self.tenants.values(), *self.queues.values()]
        for block in blocks:
            walk(block)
        return frozenset(found)


# -- parsing ---------------------------------------------------------------------------


def _table(value: Any, path: str, parts: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: {parts[0]}: expected a table")
    for name, body in value.items():
        if not isinstance(body, Mapping):
            raise ConfigError(
                f"{path}: [{table_name(*parts)}] {name}: expected a table, got {body!r}"
            )
    return value


def _parse_tenant(body: Mapping[str, Any], path: str, name: str) -> TenantBlock:
    where = f"{path}: [{table_name('tenant', name)}]"
    options: dict[str, Any] = {}
    kw: dict[str, Any] = {}
    campaigns: dict[str, str] = {}
    for key, value in body.items():
        if key in QUEUE_OPTION_NAMES:
            options[key] = value
        elif key == "require_authz":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where} {key}: expected a list of identities, got {value!r}")
            kw[key] = tuple(value)
        elif key == "overall_max_message_rate":
            raise ConfigError(f'{where} key "{key}": not supported by Nimbus')
        elif key == "suppression":
            if not isinstance(value, bool):
                raise ConfigError(f"{where} {key}: expected true or false, got {value!r}")
            kw[key] = value
        elif isinstance(value, Mapping):
            campaigns[key] = _parse_tenant_campaign(value, path, name, key)
        else:
            raise ConfigError(
                f"{where} {key}: unknown key (a queue option, require_authz, suppression, "
                f"overall_max_message_rate, or a [campaign] table)"
            )
    queue_config_from_options(options, where=where)
    return TenantBlock(options=options, campaign_rates=campaigns, **kw)


def _parse_tenant_campaign(body: Mapping[str, Any], path: str, tenant: str, name: str) -> str:
    where = f"{path}: [{table_name('tenant', tenant, name)}]"
    for key in body:
        if key != "overall_max_message_rate":
            raise ConfigError(
                f"{where} {key}: only overall_max_message_rate is used here; put "
                f"queue options in [{table_name('queue', '<domain>', tenant, name)}]"
            )
    # Nothing applies the rate before the ready queue yet: refuse rather than ignore.
    raise ConfigError(f'{where} key "overall_max_message_rate": not supported by Nimbus')


def _parse_queue(body: Mapping[str, Any], path: str, parts: tuple[str, ...]) -> QueueBlock:
    """A ``[queue.*]`` block; depth 2 is a domain, 3 a tenant, 4 a campaign."""
    where = f"{path}: [{table_name(*parts)}]"
    nestable = len(parts) < 4 and parts[1] != "default"
    options: dict[str, Any] = {}
    routing: str | None = None
    children: dict[str, QueueBlock] = {}
    for key, value in body.items():
        if key in QUEUE_OPTION_NAMES:
            options[key] = value
        elif key == "routing_domain":
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{where} {key}: expected a domain name, got {value!r}")
            routing = value
        elif key == "overall_max_message_rate":
            raise ConfigError(f"{where} {key}: only honoured in [tenant.*] blocks")
        elif isinstance(value, Mapping) and nestable:
            children[key] = _parse_queue(value, path, (*parts, key))
        elif isinstance(value, Mapping):
            raise ConfigError(
                f"{where} {key}: unknown queue option (nested tables are not allowed here)"
            )
        else:
            raise ConfigError(f"{where} {key}: unknown queue option")
    queue_config_from_options(options, where=where)
    return QueueBlock(options=options, routing_domain=routing, children=children)
