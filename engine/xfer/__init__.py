"""Moving mail between nodes (xfer): an operator's transfer, and the node's own at scale-in.

Modules:
    wire.py      the node-to-node request (``POST /api/xfer/inject/v1``): encoding,
                 decoding, what each answer means to the sender (pure)
    peers.py     the peer list: URLs and DNS names (a headless Service) to base URLs,
                 and which peer takes the next message (pure pick, async resolve)
    sender.py    ``Transfers``: admin transfer jobs (``/api/admin/xfer/v1``, cancel,
                 progress) and the scale-in transfer of the whole spool at shutdown
    receiver.py  the ``/api/xfer/inject/v1`` route: cluster-secret check, then the
                 accept path's ``accept_transfer`` (durable before the answer)

At-least-once: the receiver stores a message (fsync) before it answers 200, and only
then does the sender delete its copy; a crash between the two leaves a copy on both
nodes, and the receiver answers a repeated id with ``duplicate`` instead of storing it
twice. The receiver keeps the message's id, queue, meta, created time (so ``max_age``
counts from the first reception), due time and attempt count.
"""
