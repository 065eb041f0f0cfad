"""Delivery: where a message goes on the network and the SMTP session that takes it there.

Modules:
    mx      MX / A / AAAA resolution (dnspython async) with a TTL cache; site-name rollup
    client  one outbound SMTP session (aiosmtplib): TLS modes, per-phase timeouts, replies
    ports   the protocols delivery is used through: SmtpConnector/SmtpConnection, Resolver
    connector  the real SmtpConnector over ``client``
"""
