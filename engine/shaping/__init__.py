"""Shaping: how fast and how wide each path may go, and what the TSA says.

Modules:
    gate        may a ready queue open a connection / send a message now (leases, rates)
    overlay     the TSA's suspensions, bounces and config overrides, expiring on their own
    tsa_client  keeps the overlay in sync from Redis (pub/sub + resync)
    warmup      IP warm-up: each warming source's window count (take, status, readings)
    throttle/   the throttle store: pure GCRA and leases, embedded and Redis backends
"""
