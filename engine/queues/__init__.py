"""Queues: from a spooled message to an SMTP connection, and what happens after.

Modules:
    naming     pure queue names: scheduled ``campaign:tenant@domain!routing``, ready
               ``source->site@smtp_client``
    scheduled  the scheduled queues: one due-time heap
    routing    a due message -> its ready queue (queue config, source, destination)
    controls   admin and TSA holds: bounced, suspended or re-configured right now?
    ready      ready queues: connections per source->site, host fallback, reuse
    outcomes   dispositions: log record + spool change + reschedule or expiry
"""
