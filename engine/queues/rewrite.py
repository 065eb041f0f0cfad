"""``smtp_client_rewrite_delivery_status``: the policy's chance to change a failure's code.

Exports:
    rewrite_delivery_status(registry, queue, response) -> Response

A policy may, for example, treat a provider's 5xx as 4xx. The rewritten reply's
text says so, as KumoMTA's does; a handler that rejects or fails leaves the reply
as it was (the registry logs the failure).
"""

from __future__ import annotations

import dataclasses

from engine.policy.events import (
    SMTP_CLIENT_REWRITE_DELIVERY_STATUS,
    PolicyFailure,
    Registry,
    Rejected,
)
from engine.queues.naming import QueueName
from engine.records import Response

__all__ = ["rewrite_delivery_status"]


async def rewrite_delivery_status(registry: Registry, queue: str, response: Response) -> Response:
    """registry: the current policy. queue: the message's scheduled queue name, whose
    domain, tenant, campaign and routing domain the handler receives."""
    if not registry.has(SMTP_CLIENT_REWRITE_DELIVERY_STATUS):
        return response
    q = QueueName.parse(queue)
    try:
        code = await registry.dispatch(
            SMTP_CLIENT_REWRITE_DELIVERY_STATUS,
            response,
            q.domain,
            q.tenant,
            q.campaign,
            q.routing_domain,
        )
    except (Rejected, PolicyFailure):
        return response
    if code is None or int(code) == response.code:
        return response
    return dataclasses.replace(
        response,
        code=int(code),
        content=f"{response.content} (nimbus: status was rewritten from "
        f"{response.code} -> {int(code)})",
    )
