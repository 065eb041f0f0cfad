"""Traffic-shaping automation (TSA) service: log records in, shaping overlay out.

MTAs POST their delivery log records; the ``shaping.toml`` automation rules decide which
records matter; the resulting suspensions, bounces and config overrides are kept in
Redis, shared by every replica, and pushed to MTAs over Redis pub/sub
(``engine.shaping.tsa_client``) or served in KumoMTA's formats over HTTP.

Modules, in the order a record flows:
    rules          pure: record -> matching rules -> planned overlay entries
    ingest         per record: dedupe, Threshold windows, write entries
    state          the Redis keys and atomic scripts
    exports        KumoMTA-compatible shaping.toml / suspended.json / bounced.json
    shaping_file   shaping.toml, reloaded when it changes
    metrics        nimbus_tsa_* counters
    app            the aiohttp app and ``run(settings)`` (``nimbus tsa``)
"""
