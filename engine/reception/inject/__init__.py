"""HTTP injection (KumoMTA ``/api/inject/v1``): from a JSON request to messages.

Modules:
    request  request parsing and validation (400s name the field), pure
    build    templates compiled once, one RFC 5322 message per recipient
"""
