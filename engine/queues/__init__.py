"""Queues: from a spooled message to an SMTP connection, and what happens after.

Modules:
    naming     pure queue names: scheduled ``campaign:tenant@domain!routing``, ready
               ``source->site@smtp_client``
    scheduled  the scheduled queues: one due-time heap
    routing    a due message -> its ready queue (queue config, source, destination)
    controls   admin and TSA holds: bounced, suspended or re-configured right now?
    ready      ready queues: connections per source->site, host fallback, reuse
    decisions  the ready queue's pure decisions (connections, backoff, fates)
    connect    opening a ready queue's session: targets, addresses, next host
    attempt    one delivery attempt on an open session: send, rewrite, fate
    rewrite    smtp_client_rewrite_delivery_status
    outcomes   dispositions: log record + spool change + reschedule or expiry
"""
