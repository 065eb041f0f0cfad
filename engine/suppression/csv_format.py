"""The CSV form of a suppression list, for import and export (migrations between platforms).

Exports:
    COLUMNS                    the columns, in export order
    rows_to_csv(entries) -> str
    parse_csv(text, *, default_tenant="", default_reason=ADMIN, now) -> list[Suppression]
    CsvInvalid                 a file that cannot be imported: the message names line/column

Columns (a header row is required; only ``recipient`` is required, in any order)::

    recipient   the address (``email`` is accepted as its name, as most platforms export)
    tenant      the tenant it holds for; empty: every tenant
    reason      bounce | complaint | admin (empty: admin)
    detail      free text (classification, feedback type, the admin's note)
    created     RFC 3339 UTC time (2026-01-31T12:00:00Z) or epoch seconds; empty: now
    expires     the same; empty: never

Any other column is refused (the message lists them), so no data is dropped unseen.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from engine.suppression.entries import (
    Reason,
    Suppression,
    format_time,
    normalize,
    parse_time,
)

__all__ = ["COLUMNS", "rows_to_csv", "parse_csv", "CsvInvalid"]

COLUMNS = ("recipient", "tenant", "reason", "detail", "created", "expires")
_ALIASES = {"email": "recipient"}


class CsvInvalid(ValueError):
    """The CSV cannot be imported; the message names the line and column."""


def rows_to_csv(entries: Iterable[Suppression]) -> str:
    """The entries as CSV text with a header row (RFC 4180, CRLF line ends)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    for e in entries:
        writer.writerow(
            [
                e.recipient,
                e.tenant,
                e.reason.value,
                e.detail,
                format_time(e.created),
                format_time(e.expires) or "",
            ]
        )
    return out.getvalue()


def _header(row: list[str]) -> list[str]:
    names = [_ALIASES.get(c.strip().lower(), c.strip().lower()) for c in row]
    unknown = [c for c in names if c not in COLUMNS]
    if unknown:
        raise CsvInvalid(
            f"line 1: unknown column(s) {', '.join(unknown)} (known: {', '.join(COLUMNS)}; "
            "remove the others first)"
        )
    if "recipient" not in names:
        raise CsvInvalid("line 1: no recipient (or email) column")
    if len(set(names)) != len(names):
        raise CsvInvalid("line 1: a column is named twice")
    return names


def parse_csv(
    text: str, *, default_tenant: str = "", default_reason: Reason = Reason.ADMIN, now: float
) -> list[Suppression]:
    """Parse an exported or hand-made list. Blank lines are skipped.

    default_tenant / default_reason: for rows whose column is absent or empty.
    now: the created time of rows without one.
    Raises CsvInvalid naming the line and column of the first bad value.
    """
    reader = csv.reader(io.StringIO(text))
    try:
        first = next(reader)
    except StopIteration:
        raise CsvInvalid("empty file: expected a header row with a recipient column") from None
    names = _header(first)
    entries = []
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(names):
            raise CsvInvalid(f"line {line}: {len(row)} fields, the header has {len(names)}")
        cells = dict(zip(names, (c.strip() for c in row), strict=True))
        recipient = normalize(cells["recipient"])
        if "@" not in recipient:
            raise CsvInvalid(f"line {line}: recipient {cells['recipient']!r} is no address")
        try:
            reason = Reason(cells["reason"].lower()) if cells.get("reason") else default_reason
        except ValueError:
            raise CsvInvalid(
                f"line {line}: reason {cells['reason']!r} is not bounce, complaint or admin"
            ) from None
        try:
            created = parse_time(cells.get("created"))
            expires = parse_time(cells.get("expires"))
        except ValueError as exc:
            raise CsvInvalid(f"line {line}: {exc}") from None
        entries.append(
            Suppression(
                recipient=recipient,
                tenant=cells.get("tenant") or default_tenant,
                reason=reason,
                detail=cells.get("detail", ""),
                created=now if created is None else created,
                expires=expires,
            )
        )
    return entries
