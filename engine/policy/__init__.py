"""Policy: what a policy module sees and answers, and the events that ask it.

Modules:
    events          the typed event registry: every hook declared once, dispatch with timeout
    loader          loads ``<policy dir>/init.py`` -> ``register(nimbus)`` into a Registry
    message         PolicyMessage: meta, headers, DKIM and scheduling requests
    conformance     KumoMTA's conformance labels: pure check and fix
    scheduling      per-message send windows and expiry (pure)
    queue_config    QueueConfig (a get_queue_config answer) and the pure retry decision
    egress          EgressPathConfig, EgressSource, EgressPool (get_egress_* answers)
    egress_options  KumoMTA egress-path options (TOML, TSA overrides) -> EgressPathConfig
    listener_domain ListenerDomain (the get_listener_domain answer)
    log_hook        LogHook (what ``nimbus.configure_log_hook`` configures)
    warmup          WarmupSchedule (what ``nimbus.configure_warmup`` configures) and the
                    pure window arithmetic: day, window bounds, allowance
    helpers/        KumoMTA-format TOML helpers: queues, sources (+ warmup tables), shaping,
                    dkim_data, bounce
The answer records live here, below every stage, because every stage reads them.
"""
