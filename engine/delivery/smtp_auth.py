"""Smarthost AUTH PLAIN (RFC 4954, RFC 4616): when to send the credential, and what.

Exports:
    auth_refusal(path, *, host, tls, verified) -> Response | None   (pure)
    plain_initial_response(username, password) -> str               (pure)
    read_password(source) -> str       a KeySource's secret (a file path or inline data)

KumoMTA semantics (``make_egress_path``): AUTH PLAIN is attempted when
``smtp_auth_plain_username`` is set, only over TLS unless
``allow_smtp_auth_plain_without_tls``, and only over TLS whose certificate was verified
unless ``allow_smtp_auth_plain_without_valid_certificate`` (an active attacker can
present their own certificate and capture the credential). A refused attempt is a
``451 4.7.0`` TransientFailure, and the password never leaves the process.
"""

from __future__ import annotations

import base64
from pathlib import Path

from engine.policy.egress import EgressPathConfig, KeySource
from engine.records import Response

__all__ = ["auth_refusal", "plain_initial_response", "read_password"]


def auth_refusal(
    path: EgressPathConfig, *, host: str, tls: bool, verified: bool
) -> Response | None:
    """Why AUTH PLAIN must not be sent on this session, or None when it may be.

    tls: the session is encrypted (STARTTLS done). verified: the peer certificate was
    validated (``enable_tls = "Required"``). Plaintext allowed by
    ``allow_smtp_auth_plain_without_tls`` implies unverified TLS is allowed too: an
    encrypted session is never worse than a plaintext one.
    """
    if path.allow_smtp_auth_plain_without_tls:
        return None
    if not tls:
        return Response.parse(
            451,
            f"4.7.0 AUTH PLAIN to {host} needs TLS but the session is not encrypted; "
            f"the password is not sent in plaintext (allow_smtp_auth_plain_without_tls)",
            "AUTH",
        )
    if not verified and not path.allow_smtp_auth_plain_without_valid_certificate:
        return Response.parse(
            451,
            f"4.7.0 AUTH PLAIN to {host} needs a verified certificate (enable_tls = "
            f'"Required"); allow_smtp_auth_plain_without_valid_certificate is false',
            "AUTH",
        )
    return None


def plain_initial_response(username: str, password: str) -> str:
    """RFC 4616 2: ``authzid NUL authcid NUL passwd``, base64; authzid left empty."""
    return base64.b64encode(f"\0{username}\0{password}".encode()).decode("ascii")


def read_password(source: KeySource | None) -> str:
    """The secret of ``source``: inline ``key_data`` or a file's text, one trailing
    newline stripped (a mounted Secret usually ends with one). Blocking: call it in
    a thread. Raises OSError for an unreadable file, ValueError for no source."""
    if source is None:
        raise ValueError("smtp_auth_plain_password is not set")
    if source.key_data is not None:
        return source.key_data
    if source.path is None:
        raise ValueError("smtp_auth_plain_password: only a path or key_data is supported")
    text = Path(source.path).read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text
