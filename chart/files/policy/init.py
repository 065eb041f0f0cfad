"""Nimbus default policy: KumoMTA's policy-extras, wired together, in Python.

The node loads this module and calls ``register(nimbus)``; handlers are registered
explicitly with ``@nimbus.on(event)`` (event names: engine/policy/events.py). Everything here
is driven by the TOML files next to it, in KumoMTA's formats:

    queues.toml       tenant/campaign headers -> queue, per-queue retry/expiry/pool
    sources.toml      egress sources and weighted pools; IP warm-up schedules per source
    shaping.toml      per-destination delivery limits, provider rules, TSA automation
    dkim_data.toml    DKIM signing keys per From domain (none active by default)
    bounce_rules.toml bounce classification of log records

Edit any of them (or this file) and the node reloads within seconds (or on SIGHUP);
a broken edit is refused and the running policy stays. ``nimbus validate`` checks
them without starting a node.
"""

import asyncio

from engine.policy.helpers.dkim_data import DkimData
from engine.policy.helpers.queues import QueueHelper
from engine.policy.helpers.shaping import resolve
from engine.policy.helpers.shaping_load import load_shaping
from engine.policy.helpers.sources import SourcesHelper

ROLLUP_LOOKUP_TIMEOUT = 10.0
"""Longest start-up wait for the MX lookups that key mx_rollup shaping blocks."""


def register(nimbus):
    queues = QueueHelper.load(nimbus.path("queues.toml"))
    sources = SourcesHelper.load(nimbus.path("sources.toml"))
    shaping = load_shaping([nimbus.path("shaping.toml")])
    dkim = DkimData.load(nimbus.path("dkim_data.toml"))
    nimbus.configure_bounce_classifier(["bounce_rules.toml"])
    sources.validate((), referenced_pools=queues.egress_pools())
    sources.validate_providers(shaping.providers)  # warm-up provider tables name shaping's
    nimbus.configure_warmup(sources.warmup)  # none in the bundled file: no source is limited
    site_of = {}  # shaping domain -> its MX site name (for mx_rollup blocks)

    def sink_mode():
        settings = nimbus.settings
        return settings is not None and settings.sink.enabled

    @nimbus.on("init")
    async def resolve_rollup_sites():
        """Key mx_rollup shaping blocks by their MX site name (as KumoMTA's loader does).
        A domain whose lookup fails simply applies nowhere until the next reload."""
        domains = shaping.rollup_domains()
        if not domains or sink_mode():
            return

        async def lookup(domain):
            try:
                site_of[domain] = (await nimbus.resolve_mx(domain)).site_name
            except Exception:  # DNS failure or null MX: KumoMTA's dns_fail/null_mx=Ignore
                pass

        try:
            async with asyncio.timeout(ROLLUP_LOOKUP_TIMEOUT):
                await asyncio.gather(*(lookup(d) for d in domains))
        except TimeoutError:
            pass

    # The plain handlers below look up tables loaded at start-up (dkim_data reads a wildcard
    # domain's key file once, then caches it) and never wait on the network, so they run
    # inline on the loop: a worker-thread hop costs ~100 us of CPU per dispatch
    # (bench/policy_dispatch_bench.py) against ~25 us for the whole inline message handler.
    def received(msg):
        queues.apply(msg)  # tenant/campaign from headers; unknown tenant -> 500
        dkim.sign(msg)  # recorded now, signed after the event returns, off the loop

    @nimbus.on("smtp_server_message_received", inline=True)
    def smtp_message(msg, conn_meta):
        received(msg)

    @nimbus.on("http_message_generated", inline=True)
    def http_message(msg, auth_info):
        received(msg)

    if queues.overrides_suppression():
        # Only when a [tenant.*] sets suppression: with a handler, SMTP decides after DATA
        # (the tenant is known then) rather than at RCPT.
        @nimbus.on("should_suppress_recipient", inline=True)
        def should_suppress(recipient, tenant, reason):
            return queues.suppression(tenant)

    @nimbus.on("get_queue_config", inline=True)
    def queue_config(domain, tenant, campaign, routing_domain):
        return queues.queue_config(domain, tenant, campaign, routing_domain)

    @nimbus.on("get_egress_source", inline=True)
    def egress_source(name):
        return sources.source(name)

    @nimbus.on("get_egress_pool", inline=True)
    def egress_pool(name):
        return sources.pool(name)

    async def shaped(routing_domain, egress_source, site_name):
        mx_hosts = ()
        if not site_name.startswith("mx_list:"):
            # Provider rules match on every MX host; the node's resolver cache answers.
            try:
                mx_hosts = (await nimbus.resolve_mx(routing_domain)).hosts
            except Exception:
                mx_hosts = ()
        return resolve(
            shaping,
            domain=routing_domain,
            source=egress_source,
            site_name=site_name,
            mx_hosts=mx_hosts,
            site_of=site_of,
        )

    @nimbus.on("get_egress_path_config")
    async def egress_path(routing_domain, egress_source, site_name):
        return (await shaped(routing_domain, egress_source, site_name)).config

    @nimbus.on("explain_egress_path_config")
    async def explain_egress_path(routing_domain, egress_source, site_name):
        """Where each shaping value came from (nimbus resolve-egress-path)."""
        return dict((await shaped(routing_domain, egress_source, site_name)).origins)
