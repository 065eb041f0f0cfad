"""Nimbus default policy.

A policy is a Python module defining ``register(nimbus)``, which registers event
handlers explicitly::

    def register(nimbus):
        @nimbus.on("get_queue_config")
        def queue_config(domain, tenant, campaign, routing_domain):
            return nimbus.QueueConfig(retry_interval=nimbus.duration("10m"))

Events (KumoMTA's names): see ``engine/events.py`` ``EVENTS``. An event with no
handler uses the engine's built-in default: queue config retry 20m doubling,
max_age 7 days; the ``unspecified`` egress pool/source; egress path limits as
KumoMTA's code defaults (connection_limit 32, Opportunistic TLS, ...).

This default registers nothing, so those built-in defaults apply: a single node
that delivers by MX lookup (or to the sink when NIMBUS_SINK_ENABLED is true).
"""


def register(nimbus):
    """No handlers: the engine's defaults are the default policy."""
