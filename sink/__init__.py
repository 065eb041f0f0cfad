"""The sink service (``nimbus sink``): an SMTP receiver that accepts and discards test traffic,
or, given a KumoMTA-style responses file, answers each recipient the way a mailbox provider
might (deferrals, bounces, latency).

Modules, in the order a message meets them:
    server.py     the SMTP listener (aiosmtpd on our loop): per-RCPT replies, DATA discarded
    responses.py  the pure decision: responses file -> Decision(code, text, delay)
    app.py        run(settings) / build(settings): listeners, /metrics, liveness, reload

``responses.example.toml`` is a starting point with real mailbox-provider texts.
"""
