"""DKIM: signing messages the policy asked to sign, off the event loop.

Modules:
    signer   Signer records and pure signing (RSA-SHA256 via OpenSSL, Ed25519-SHA256)
    service  DkimService: signing in worker processes (ProcessPoolExecutor) or a thread
"""
