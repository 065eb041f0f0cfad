"""Storage: the durable spool.

Modules:
    spool   SQLite WAL, synchronous=FULL, one writer thread with group commit, recovery
"""
