"""The throttle store: GCRA rates, connection leases and window counters, this node's or
the cluster's.

Modules:
    gcra      the arithmetic, pure: GCRA step, lease maps, local shares, key names
    store     the ThrottleStore interface
    embedded  in-process backend (the default without Redis)
    counts_file  the embedded backend's window counters on disk (survive a restart)
    redis     Redis backend (Lua on Redis TIME) with a local fallback during an outage
    node_socket  the node's store shared by its workers (the supervisor serves it)
    factory   make_store(settings): which one this node uses
"""
