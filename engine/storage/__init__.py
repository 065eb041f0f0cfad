"""Storage: the durable spool and the group-commit SQLite writer under it.

Modules:
    writer  one thread, one connection; every waiting request in one transaction (one
            fsync); a failing request fails alone; used by the spool and the log-hook queue
    spool   SQLite WAL, synchronous=FULL, group commit through the writer, recovery
    shards  one spool per engine worker; adopting the shards no worker owns
    held    the ids the spool holds and their creation times: count and oldest, O(1)
"""
