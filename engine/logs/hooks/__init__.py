"""Log hooks: records published to the TSA and to webhooks, at least once.

Modules:
    publisher  LogHookPublisher: intake filter, should_enqueue_log_record, lifecycle
    store      the SQLite queue of pending records (one thread owns the connection)
    sender     one hook's sender: batches, POST, backoff
The hook's configuration record is ``engine.policy.log_hook`` (a policy configures it).
"""
