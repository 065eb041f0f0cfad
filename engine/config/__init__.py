"""Settings and the pure value parsers every stage uses.

Modules:
    settings       node settings: defaults < TOML file < environment < flags, into frozen
                   dataclasses; ConfigError names file, table and key; read_toml
    env_names      NIMBUS_* names something reads; unknown ones with the closest match
    units          durations ("90m"), sizes ("20MB"), host:port
    throttle_spec  "[local:]N/period[,max_burst=B]" rates and "[local:]N" limits
    backoff        the one retry schedule: capped exponential with equal jitter (pure)
"""
