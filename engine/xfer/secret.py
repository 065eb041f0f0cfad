"""The cluster secret nodes present to each other on ``/api/xfer/inject/v1``.

Exports:
    load_secret(cluster) -> str | None     from ``cluster.secret_file`` (a mounted
                                           Kubernetes Secret), else ``cluster.secret``
    authorization(secret) -> str           the sender's ``Authorization`` header value
    check(header, secret) -> (status, reason) | None   the receiver's verdict (pure)
"""

from __future__ import annotations

import hmac
from pathlib import Path

from engine.config.settings import ClusterSettings, ConfigError

__all__ = ["load_secret", "authorization", "check"]

MIN_LENGTH = 16


def load_secret(cluster: ClusterSettings) -> str | None:
    """The secret, or None when none is configured. ConfigError for a secret file that
    cannot be read or one too short to be a secret."""
    value = cluster.secret
    where = "[cluster] secret"
    if cluster.secret_file:
        where = "[cluster] secret_file"
        try:
            value = Path(cluster.secret_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: cannot read {cluster.secret_file!r}: {exc}") from None
    value = value.strip()
    if not value:
        return None
    if len(value) < MIN_LENGTH:
        raise ConfigError(f"{where}: must be at least {MIN_LENGTH} characters")
    return value


def authorization(secret: str) -> str:
    return f"Bearer {secret}"


def check(header: str | None, secret: str | None) -> tuple[int, str] | None:
    """None when ``header`` carries the cluster secret; else (401 or 403, reason)."""
    if not header:
        return 401, "cluster secret required (Authorization: Bearer <cluster secret>)"
    if secret is None:
        return 403, (
            "this node has no cluster secret (cluster.secret_file / "
            "NIMBUS_CLUSTER_SECRET_FILE): it takes no transfers"
        )
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), secret.encode()
    ):
        return 403, "wrong cluster secret"
    return None
