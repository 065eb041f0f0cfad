"""Binding a listening socket, with an error that says what to do about it.

Exports:
    ListenError    an ``OSError`` whose message is one line: the address, the cause, the fix
    binding(service, address, setting)   context manager: a bind's OSError -> ListenError

Used by every listener start (the MTA's SMTP and HTTP, ``nimbus tsa``, ``nimbus sink``),
so ``nimbus`` can print one line and exit 2 instead of a traceback (``engine/cli.py``).
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator

__all__ = ["ListenError", "binding"]


class ListenError(OSError):
    """A listener could not bind its address; ``str()`` is a one-line cause and fix."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _fix(exc: OSError, setting: str) -> str:
    env = "NIMBUS_" + setting.replace(".", "_").upper()
    where = f"set {setting} ({env})"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name; {where} to an address of this host"
    if exc.errno == errno.EADDRINUSE:
        return f"address already in use; stop the process using it or {where} to a free port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"no interface of this host has that address; {where} to one (or 0.0.0.0)"
    if exc.errno == errno.EACCES:
        return f"permission denied; {where} to a port above 1023 or grant CAP_NET_BIND_SERVICE"
    return f"{exc.strerror or exc}; check {setting} ({env})"


@contextlib.contextmanager
def binding(service: str, address: str, setting: str) -> Iterator[None]:
    """Turn an ``OSError`` raised while binding into a ListenError.

    service: what listens (``"SMTP"``, ``"HTTP"``). address: the configured host:port.
    setting: the dotted setting that holds it (``"smtp.listen"``), named in the fix.
    """
    try:
        yield
    except ListenError:
        raise
    except OSError as exc:
        raise ListenError(
            f"cannot listen for {service} on {address}: {_fix(exc, setting)}", exc.errno
        ) from None
