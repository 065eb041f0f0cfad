"""Suppression: recipients that must not get mail any more, and the check at reception.

Modules:
    entries.py    ``Suppression`` (one entry), ``Reason``; the pure decisions: which log
                  record suppresses whom and until when, which entry applies to a
                  recipient and tenant, the refusal reply, list filters
    csv_format.py the CSV import/export columns (pure)
    store.py      ``SuppressionStore`` (the interface), ``LocalStore`` (SQLite in the spool
                  directory, held in memory), ``StoreUnavailable``
    redis_store.py ``RedisSuppressionStore``: the list shared by a cluster in Redis
    service.py    ``Suppressions``: the node's list (cached lookups, the policy override
                  event, admin edits) and the recorder task fed by log records

Entries come from hard bounces (Bounce / OOB records whose classification is in
``suppression.classifications``), complaints (Feedback records) and the admin API.
The reception check runs in ``reception/smtp.py`` (RCPT) and ``reception/accept.py``
(after the reception event, once the tenant is known).
"""
