"""SMTP commands and replies on an open session: timed commands and one mail transaction.

Exports:
    SmtpCommands   the command/reply layer over one connected ``aiosmtplib.SMTP``:
                   ``timed`` (one bounded wait), ``command`` (one line, its reply),
                   ``transaction`` (MAIL, RCPT, DATA, and RSET after a refusal), ``fail``

aiosmtplib's high-level ``sendmail`` hides per-recipient replies, so this module drives
MAIL/RCPT/DATA itself; every network await runs under ``asyncio.timeout`` named by the
``EgressPathConfig`` field for that phase, and a timeout, disconnect, malformed reply or
``421`` becomes ``ConnectionLost`` (``delivery.errors``). Opening the session (banner,
EHLO, STARTTLS, AUTH) and closing it are ``delivery.client``'s.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import TypeVar

import aiosmtplib

from engine.delivery.errors import ConnectionLost, LossCause, SessionLoss
from engine.policy.egress import EgressPathConfig
from engine.records import Response
from engine.trace import CLIENT_CONTEXT, CLIENT_TRACES, trace_event

__all__ = ["SmtpCommands"]

T = TypeVar("T")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class SmtpCommands:
    """Commands on one session to ``host``.

    transactions: transactions started on it (a local SMTPUTF8 refusal is none).
    """

    def __init__(self, smtp: aiosmtplib.SMTP, *, host: str, path: EgressPathConfig) -> None:
        self._smtp = smtp
        self._host = host
        self._path = path
        self._broken = False
        self._reused = False  # the transaction in flight is not the session's first
        self.transactions = 0
        # Live traces: the ready queue's facts (its connection task set them), this host,
        # and the transaction in flight. Only read when someone watches.
        self._trace_ctx = CLIENT_CONTEXT.get()
        self._trace_tx: dict[str, str] = {}
        self.peer_addr = ""

    def trace(self, kind: str, data: bytes | str | None = None) -> None:
        """Publish one trace event for this session (``nimbus trace-smtp-client``)."""
        if not CLIENT_TRACES.active:
            return
        ctx = self._trace_ctx or {}
        CLIENT_TRACES.publish(
            trace_event(
                kind,
                str(ctx.get("session_id", f"c{id(self):x}")),
                data=data,
                mx_host=self._host,
                peer=self.peer_addr,
                **{k: v for k, v in ctx.items() if k != "session_id"},
                **self._trace_tx,
            )
        )

    @property
    def usable(self) -> bool:
        """False once the session broke or the peer closed it."""
        return not self._broken and self._smtp.is_connected

    def _lost(self, response: Response, phase: str, cause: LossCause) -> ConnectionLost:
        self.fail()
        return ConnectionLost(response, SessionLoss(phase=phase, cause=cause, reused=self._reused))

    def fail(self) -> None:
        """Mark the session unusable and close its transport."""
        self._broken = True
        self._smtp.close()

    async def timed(
        self, phase: str, timeout: float, aw: Awaitable[T], command: str | None = None
    ) -> T:
        """Await ``aw`` under ``timeout``; transport failures become ConnectionLost.

        phase: names the wait in the synthetic reply; command: what the reply answers.
        """
        command = command or phase
        try:
            async with asyncio.timeout(timeout):
                return await aw
        except TimeoutError:
            raise self._lost(
                Response.parse(
                    451, f"4.4.2 timeout waiting for {phase} reply from {self._host}", command
                ),
                phase,
                LossCause.TIMEOUT,
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            if exc.code != aiosmtplib.SMTPStatus.invalid_response:
                raise
            error: Exception = exc  # a malformed reply: the session is out of step
            cause = LossCause.GARBLED
        except aiosmtplib.SMTPTimeoutError as exc:
            error, cause = exc, LossCause.TIMEOUT
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
            error, cause = exc, LossCause.DISCONNECTED  # EOF or reset: no reply came
        response = Response.parse(
            421, f"4.4.2 {self._host}: connection lost during {phase}: {error}", command
        )
        raise self._lost(response, phase, cause) from error

    async def command(
        self,
        phase: str,
        timeout: float,
        command: str,
        encoding: str = "ascii",
        log_as: str | None = None,
    ) -> Response:
        """Send one command line; return the reply, or raise ConnectionLost on 421.

        log_as: what replies name as their command, when the line carries a secret."""
        shown = log_as or command
        if CLIENT_TRACES.active:
            self.trace("write", shown + "\r\n")
        smtp_reply = await self.timed(
            phase,
            timeout,
            self._smtp.execute_command(command.encode(encoding), timeout=None),
            shown,
        )
        response = Response.parse(smtp_reply.code, smtp_reply.message, shown)
        if CLIENT_TRACES.active:
            self.trace("read", f"{smtp_reply.code} {smtp_reply.message}\r\n")
        if response.code == 421:  # RFC 5321 3.8: the peer is closing the channel.
            raise self._lost(response, phase, LossCause.CLOSING)
        return response

    async def transaction(self, sender: str, recipient: str, data: bytes) -> Response:
        """Deliver ``data`` (CRLF line endings, not dot-stuffed) to one recipient.

        sender: the reverse-path (``""`` for the null sender); recipient: one address.
        Returns the peer's final reply (MAIL or RCPT refusal, DATA or end-of-data reply),
        with ``command`` set. Raises ConnectionLost on timeouts, disconnects and 421,
        ValueError for an address containing control characters (nothing is sent).
        """
        if _CONTROL.search(sender) or _CONTROL.search(recipient):
            raise ValueError("envelope address contains a control character")
        self._reused = self.transactions > 0
        if not self.usable:
            # Closed while pooled (a restart, the peer's idle timeout): nothing was sent.
            closed = Response.parse(421, f"4.4.2 {self._host}: connection closed")
            raise self._lost(closed, "idle", LossCause.DISCONNECTED)
        utf8 = not (sender.isascii() and recipient.isascii())
        if utf8 and not self._smtp.supports_extension("smtputf8"):
            # RFC 6531 3.2: never send a non-ASCII address to a server without SMTPUTF8.
            return Response.parse(550, f"5.6.7 {self._host} does not support SMTPUTF8", "MAIL FROM")
        self.transactions += 1
        if CLIENT_TRACES.active:
            self._trace_tx = {
                "mail_from": sender,
                "rcpt_to": recipient,
                "domain": recipient.rpartition("@")[2].lower(),
            }
        encoding = "utf-8" if utf8 else "ascii"
        reply = await self.command(
            "MAIL FROM",
            self._path.mail_from_timeout,
            self._mail_command(sender, data, utf8),
            encoding,
        )
        if reply.code != 250:
            return await self._reset(reply)
        reply = await self.command(
            "RCPT TO", self._path.rcpt_to_timeout, f"RCPT TO:<{recipient}>", encoding
        )
        if reply.code not in (250, 251):
            return await self._reset(reply)
        return await self._data(data)

    def _mail_command(self, sender: str, data: bytes, utf8: bool) -> str:
        parts = [f"MAIL FROM:<{sender}>"]
        if self._smtp.supports_extension("size"):
            parts.append(f"SIZE={len(data)}")  # RFC 1870
        if not data.isascii() and self._smtp.supports_extension("8bitmime"):
            parts.append("BODY=8BITMIME")  # RFC 6152
        if utf8:
            parts.append("SMTPUTF8")  # RFC 6531
        return " ".join(parts)

    async def _data(self, data: bytes) -> Response:
        reply = await self.command("DATA", self._path.data_timeout, "DATA")
        if reply.code != 354:
            return await self._reset(reply)
        payload = data if data.endswith(b"\r\n") else data + b"\r\n"
        # RFC 5321 4.5.2 transparency; we write directly so the bytes stay exact
        # (aiosmtplib's data() would also re-normalize line endings).
        payload = (b"." if payload.startswith(b".") else b"") + payload.replace(b"\r\n.", b"\r\n..")
        payload += b".\r\n"
        if CLIENT_TRACES.active:
            self.trace("write", payload)
        final = await self.timed(
            "end-of-data", self._path.data_dot_timeout, self._write_payload(payload), "DATA"
        )
        response = Response.parse(final.code, final.message, "DATA")
        if CLIENT_TRACES.active:
            self.trace("read", f"{final.code} {final.message}\r\n")
        if response.code == 421:
            raise self._lost(response, "end-of-data", LossCause.CLOSING)
        return response

    async def _write_payload(self, payload: bytes) -> aiosmtplib.SMTPResponse:
        protocol = self._smtp.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        protocol.write(payload)  # no await before read_response: the reply can't be missed
        return await protocol.read_response(timeout=None)

    async def _reset(self, refusal: Response) -> Response:
        """RSET after a refusal so the connection can take the next transaction."""
        try:
            reply = await self.command("RSET", self._path.rset_timeout, "RSET")
        except ConnectionLost:
            return refusal  # already marked unusable; the refusal is still the answer
        if reply.code != 250:
            self.fail()
        return refusal
