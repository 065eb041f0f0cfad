"""Message conformance: find and fix common RFC 5322 / MIME problems (KumoMTA's labels).

Exports:
    CHECKS                       every label we know
    problems(data) -> set[str]   the labels that apply to a message (pure)
    fix(data, fixes, *, hostname, now) -> bytes   the message rebuilt with those fixes (pure)
    parse_labels("A|B") -> set[str]

Labels: MISSING_COLON_VALUE (a header line without ':'), NON_CANONICAL_LINE_ENDINGS
(bare CR or LF), NAME_ENDS_WITH_SPACE (``Subject :``), LINE_TOO_LONG (over 998
octets, RFC 5322 §2.1.1), NEEDS_TRANSFER_ENCODING (8-bit octets in a part declared
7bit or undeclared), MISSING_DATE_HEADER, MISSING_MESSAGE_ID_HEADER,
MISSING_MIME_VERSION (a MIME message without MIME-Version).
"""

from __future__ import annotations

import email.header
import email.policy
import email.utils
import re
from email import message_from_bytes
from email.message import Message as EmailMessage

__all__ = ["CHECKS", "problems", "fix", "parse_labels"]

CHECKS = frozenset(
    {
        "MISSING_COLON_VALUE",
        "NON_CANONICAL_LINE_ENDINGS",
        "NAME_ENDS_WITH_SPACE",
        "LINE_TOO_LONG",
        "NEEDS_TRANSFER_ENCODING",
        "MISSING_DATE_HEADER",
        "MISSING_MESSAGE_ID_HEADER",
        "MISSING_MIME_VERSION",
    }
)

_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def parse_labels(text: str) -> set[str]:
    """``"MISSING_DATE_HEADER|LINE_TOO_LONG"`` -> a set; unknown labels raise ValueError."""
    labels = {part.strip() for part in text.split("|") if part.strip()}
    unknown = labels - CHECKS
    if unknown:
        raise ValueError(
            f"unknown conformance label(s): {', '.join(sorted(unknown))} "
            f"(known: {', '.join(sorted(CHECKS))})"
        )
    return labels


def _split(data: bytes) -> tuple[bytes, bytes]:
    m = _HEADER_END.search(data)
    return (data, b"") if m is None else (data[: m.start()], data[m.end() :])


def _header_names(head: bytes) -> list[bytes]:
    names = []
    for line in re.split(rb"\r?\n", head):
        if line and line[:1] not in (b" ", b"\t"):
            names.append(line.partition(b":")[0])
    return names


def problems(data: bytes) -> set[str]:
    """Which conformance labels apply to ``data`` (a whole message)."""
    found: set[str] = set()
    head, body = _split(data)
    lines = [ln for ln in re.split(rb"\r?\n", head) if ln]
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            continue
        name, sep, _ = line.partition(b":")
        if not sep:
            found.add("MISSING_COLON_VALUE")
        elif name != name.rstrip(b" \t"):
            found.add("NAME_ENDS_WITH_SPACE")
    if _BARE.search(data):
        found.add("NON_CANONICAL_LINE_ENDINGS")
    if any(len(ln) > 998 for ln in re.split(rb"\r?\n", data)):
        found.add("LINE_TOO_LONG")
    names = {n.strip().lower() for n in _header_names(head)}
    if b"date" not in names:
        found.add("MISSING_DATE_HEADER")
    if b"message-id" not in names:
        found.add("MISSING_MESSAGE_ID_HEADER")
    if b"mime-version" not in names and (
        b"content-type" in names or b"content-transfer-encoding" in names
    ):
        found.add("MISSING_MIME_VERSION")
    if not data.isascii():
        parsed = message_from_bytes(data, policy=email.policy.compat32)
        for part in parsed.walk():
            if part.is_multipart():
                continue
            cte = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
            payload = part.get_payload(decode=False)
            raw = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""
            if cte in ("7bit", "") and not raw.isascii():
                found.add("NEEDS_TRANSFER_ENCODING")
        if any(not ln.isascii() for ln in lines):
            found.add("NEEDS_TRANSFER_ENCODING")
    return found


def _canonical(data: bytes) -> bytes:
    return _BARE.sub(b"\r\n", data)


def _fix_header_lines(head: bytes, fixes: set[str]) -> list[bytes]:
    out: list[bytes] = []
    for line in re.split(rb"\r?\n", head):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            if out:
                out.append(line)
            continue
        name, sep, value = line.partition(b":")
        if not sep and "MISSING_COLON_VALUE" in fixes:
            continue  # drop a line that is not a header at all
        if sep and "NAME_ENDS_WITH_SPACE" in fixes:
            line = name.rstrip(b" \t") + b":" + value
        out.append(line)
    return out


def _encode_header_lines(lines: list[bytes]) -> list[bytes]:
    """RFC 2047-encode header values holding 8-bit text (folded lines joined first)."""
    joined: list[bytes] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and joined:
            joined[-1] += b"\r\n" + line
        else:
            joined.append(line)
    out = []
    for line in joined:
        if line.isascii():
            out.append(line)
            continue
        name, _, value = line.partition(b":")
        text = value.decode("utf-8", "replace").replace("\r\n", "").strip()
        encoded = email.header.Header(text, "utf-8", header_name=name.decode("ascii", "replace"))
        out.append(name + b": " + encoded.encode(linesep="\r\n").encode("ascii"))
    return out


def _reencode(data: bytes) -> bytes:
    """Re-encode parts with long lines or undeclared 8-bit text as quoted-printable/base64."""
    msg = message_from_bytes(data, policy=email.policy.compat32)
    for part in msg.walk():
        if part.is_multipart():
            continue
        cte = str(part.get("Content-Transfer-Encoding", "7bit")).strip().lower()
        if cte not in ("7bit", "8bit", "binary", ""):
            continue
        payload = part.get_payload(decode=True)  # bytes (or None) for a non-multipart part
        raw = payload if isinstance(payload, bytes) else b""
        long_lines = any(len(ln) > 998 for ln in raw.split(b"\n"))
        if raw.isascii() and not long_lines:
            continue
        _set_encoded(part, raw)
    return msg.as_bytes(policy=email.policy.compat32.clone(linesep="\r\n"))


def _set_encoded(part: EmailMessage, raw: bytes) -> None:
    del part["Content-Transfer-Encoding"]
    part.set_payload(raw)
    if part.get_content_maintype() == "text":
        if part.get_content_charset() is None:
            part.set_param("charset", "utf-8")
        from email.encoders import encode_quopri

        encode_quopri(part)
    else:
        from email.encoders import encode_base64

        encode_base64(part)


def fix(data: bytes, fixes: set[str], *, hostname: str, now: float) -> bytes:
    """Rebuild ``data`` applying ``fixes`` (labels); returns CRLF bytes."""
    if "NON_CANONICAL_LINE_ENDINGS" in fixes:
        data = _canonical(data)
    reencoded = False
    if fixes & {"LINE_TOO_LONG", "NEEDS_TRANSFER_ENCODING"} and (
        problems(data) & {"LINE_TOO_LONG", "NEEDS_TRANSFER_ENCODING"}
    ):
        before = data
        data = _reencode(data)
        reencoded = data != before
    head, body = _split(data)
    lines = _fix_header_lines(head, fixes)
    if "NEEDS_TRANSFER_ENCODING" in fixes:
        lines = _encode_header_lines(lines)
    names = {ln.partition(b":")[0].strip().lower() for ln in lines if ln[:1] not in b" \t"}
    if reencoded and b"mime-version" not in names:
        # Re-encoding added Content-Type/-Transfer-Encoding: that makes it a MIME message.
        lines.append(b"MIME-Version: 1.0")
        names.add(b"mime-version")
    if "MISSING_DATE_HEADER" in fixes and b"date" not in names:
        lines.append(b"Date: " + email.utils.formatdate(now).encode())
    if "MISSING_MESSAGE_ID_HEADER" in fixes and b"message-id" not in names:
        lines.append(b"Message-ID: " + email.utils.make_msgid(domain=hostname).encode())
    if (
        "MISSING_MIME_VERSION" in fixes
        and b"mime-version" not in names
        and (b"content-type" in names or b"content-transfer-encoding" in names)
    ):
        lines.append(b"MIME-Version: 1.0")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
