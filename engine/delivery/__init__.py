"""Delivery: where a message goes on the network and the SMTP session that takes it there.

Modules:
    mx      MX / A / AAAA resolution (dnspython async) with a TTL cache; site-name rollup
    client  one outbound SMTP session's lifecycle (aiosmtplib): open, TLS modes, AUTH, close
    commands  timed commands and replies on an open session; one mail transaction
    errors  DeliveryError and its subclasses (ConnectFailed, TlsFailed, ConnectionLost, ...)
    broken_tls  the memory of failed opportunistic TLS handshakes (remember_broken_tls)
    smtp_auth  AUTH PLAIN: when it may be sent, the initial response, the password file
    ports   the protocols delivery is used through: SmtpConnector/SmtpConnection, Resolver
    connector  the real SmtpConnector over ``client``
"""
