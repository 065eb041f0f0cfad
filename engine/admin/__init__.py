"""Admin: what operators see and steer on a running node.

Modules:
    entries   bounce / suspend / ready-queue suspend records and which queues they select
    requests  admin request JSON -> records (pure, KumoMTA's deny_unknown_fields)
    state     AdminState (live entries) and AdminApi (what the HTTP routes call)
    ops       operations on the node's queues: bounce now, rebind, inspect, summaries
    http      the admin HTTP routes (KumoMTA's paths), trusted hosts or credentials
    status    the node's status for the status page (pure: Readings in, NodeStatus out)
    status_readings  reading the node's parts into Readings (one walk a second at most)
    status_page      GET / and /status (Jinja2, templates/), GET /api/admin/status/v1
    cli       the ``nimbus <verb>`` admin client
    suppression        the ``/api/admin/suppression/v1`` requests (pure) and answers
    suppression_verbs  ``nimbus suppression-list/-add/-remove/-import/-export``
"""
