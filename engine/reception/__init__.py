"""Reception: SMTP and HTTP listeners that take mail in and hand it to the spool.

Modules:
    smtp_session   the SMTP protocol session (aiosmtpd's SMTP: bulk DATA, fast addresses)
    smtp           the SMTP handler and listener: relay rules, limits, policy events, replies
    http           HTTP routes: /api/inject/v1, readiness, liveness, metrics, /api/openapi.json
    openapi        the OpenAPI document of every HTTP route (reception and admin)
    json_body      JSON request bodies under shared limits (depth, lone surrogates)
    http_listener  the HTTP socket serving an aiohttp app (MTA, TSA, sink), body rules
    inject/        injection requests -> messages
    auth           basic-auth users from a directory, constant-time check
    accept         the shared accept path: policy event, queue name, DKIM, one spool
                   commit per batch, Reception record, schedule
Reception never imports delivery: they meet through storage and queues.
"""
