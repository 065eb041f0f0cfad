"""The suppression verbs of ``nimbus``: list, add, remove, CSV import and export.

Exports:
    add_suppression_verbs(verb, table)   register the verbs with admin/cli.py's ``verb``
                                  factory and its table formatter
    SUPPRESSION_VERBS             their names
    UsageError                    a usage problem found after parsing (exit 2)

Verbs (over ``/api/admin/suppression/v1``, ``admin/http.py``):

    suppression-list   [--recipient A] [--domain D] [--tenant T | --all-tenants-only]
                       [--reason R] [--limit N] [--json]
    suppression-add    --recipient A (repeatable) [--tenant T] [--reason R]
                       [--detail TEXT] [--duration 30d]
    suppression-remove --recipient A [--tenant T]
    suppression-import FILE [--tenant T] [--reason R] [--batch N]   (``-``: stdin)
    suppression-export [--output FILE] + the list filters         CSV (csv_format.COLUMNS)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from engine.suppression.csv_format import COLUMNS, CsvInvalid, parse_csv, rows_to_csv
from engine.suppression.entries import Reason, from_json, to_json

__all__ = ["add_suppression_verbs", "SUPPRESSION_VERBS", "UsageError"]

PATH = "/api/admin/suppression/v1"
BATCH = 1000
"""Entries per POST when importing (the route takes up to 10,000)."""


class Client(Protocol):
    def call(
        self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None
    ) -> Any: ...


Verb = Callable[[Any, argparse.Namespace], None]
VerbFactory = Callable[[str, Verb, str], argparse.ArgumentParser]
TableFormat = Callable[[Sequence[str], Sequence[Sequence[Any]]], str]

# admin/cli.py's format_table, handed over at registration (this module cannot import
# the module that imports it).
_TABLE: list[TableFormat] = []


class UsageError(Exception):
    """A usage error found after parsing (exit 2)."""


def _query(args: argparse.Namespace) -> dict[str, Any]:
    query: dict[str, Any] = {
        "recipient": args.recipient,
        "domain": args.domain,
        "reason": args.reason,
        "limit": getattr(args, "limit", None),
    }
    if args.all_tenants_only:
        if args.tenant:
            raise UsageError("--tenant and --all-tenants-only exclude each other")
        query["tenant"] = ""
    elif args.tenant:
        query["tenant"] = args.tenant
    return query


def _list(c: Client, args: argparse.Namespace) -> None:
    answer = c.call("GET", PATH, query=_query(args))
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
        return
    rows = [
        (
            e["recipient"],
            e["tenant"] or "*",
            e["reason"],
            e["detail"],
            e["created"][:19] + "Z",
            (e["expires"][:19] + "Z") if e["expires"] else "never",
        )
        for e in answer["entries"]
    ]
    print(_TABLE[0](("RECIPIENT", "TENANT", "REASON", "DETAIL", "CREATED", "EXPIRES"), rows))
    more = f" (first {len(rows)} shown; --limit 0 for all)" if answer["truncated"] else ""
    print(f"{answer['total']} suppressed{more}")


def _add(c: Client, args: argparse.Namespace) -> None:
    entries = []
    for recipient in args.recipient:
        entry: dict[str, Any] = {"recipient": recipient, "reason": args.reason}
        for name in ("tenant", "detail", "duration"):
            if getattr(args, name):
                entry[name] = getattr(args, name)
        entries.append(entry)
    print(json.dumps(c.call("POST", PATH, {"entries": entries}), sort_keys=True))


def _remove(c: Client, args: argparse.Namespace) -> None:
    body = {"recipient": args.recipient, **({"tenant": args.tenant} if args.tenant else {})}
    print(json.dumps(c.call("DELETE", PATH, body), sort_keys=True))


def _import(c: Client, args: argparse.Namespace) -> None:
    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8-sig", newline="") as fh:
                text = fh.read()
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    try:
        entries = parse_csv(
            text,
            default_tenant=args.tenant or "",
            default_reason=Reason(args.reason),
            now=time.time(),
        )
    except CsvInvalid as exc:
        raise UsageError(f"{args.file}: {exc}") from None
    added = 0
    for start in range(0, len(entries), args.batch):
        batch = [to_json(e) for e in entries[start : start + args.batch]]
        added += c.call("POST", PATH, {"entries": batch})["added"]
    print(json.dumps({"added": added}))


def _export(c: Client, args: argparse.Namespace) -> None:
    query = _query(args)
    query["limit"] = 0
    answer = c.call("GET", PATH, query=query)
    text = rows_to_csv(from_json(e) for e in answer["entries"])
    if args.output:
        with open(args.output, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)


def _filters(p: argparse.ArgumentParser, *, limit: bool) -> None:
    p.add_argument("--recipient", help="exactly this address (case-insensitive)")
    p.add_argument("--domain", help="addresses of this domain")
    p.add_argument("--tenant", help="entries of this tenant only")
    p.add_argument(
        "--all-tenants-only",
        action="store_true",
        help="entries that hold for every tenant only",
    )
    p.add_argument("--reason", choices=[r.value for r in Reason], help="why suppressed")
    if limit:
        p.add_argument("--limit", type=int, help="at most this many entries (default 1000; 0: all)")


def _reason_flag(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--reason",
        choices=[r.value for r in Reason],
        default=default,
        help=f"why suppressed (default {default})",
    )


def add_suppression_verbs(verb: VerbFactory, table: TableFormat) -> None:
    """Register the suppression verbs through admin/cli.py's ``verb(name, fn, help)``;
    ``table(headers, rows)`` formats the list."""
    _TABLE[:] = [table]
    p = verb("suppression-list", _list, "list suppressed recipients (filters combine)")
    _filters(p, limit=True)  # --json comes with every verb (admin/cli.py)
    p = verb("suppression-add", _add, "suppress recipients: their mail is refused (550 5.7.1)")
    p.add_argument(
        "--recipient", action="append", required=True, help="address to suppress (repeatable)"
    )
    p.add_argument("--tenant", help="only this tenant's mail (default: every tenant)")
    _reason_flag(p, "admin")
    p.add_argument("--detail", help="a note, listed and quoted in the refusal")
    p.add_argument(
        "--duration", help="how long it holds, e.g. 30d (default suppression.admin_expiry)"
    )
    p = verb("suppression-remove", _remove, "remove a recipient from the suppression list")
    p.add_argument("--recipient", required=True, help="the suppressed address")
    p.add_argument("--tenant", help="the tenant of the entry (default: the every-tenant entry)")
    p = verb(
        "suppression-import",
        _import,
        f"add the entries of a CSV file (columns: {', '.join(COLUMNS)})",
    )
    p.add_argument("file", help="CSV with a header row; recipient (or email) required; - is stdin")
    p.add_argument("--tenant", help="tenant of rows without one (default: every tenant)")
    _reason_flag(p, "admin")
    p.add_argument(
        "--batch", type=int, default=BATCH, help=f"entries per request (default {BATCH})"
    )
    p = verb("suppression-export", _export, "write the suppression list as CSV (as imported)")
    _filters(p, limit=False)
    p.add_argument("--output", help="file to write (default: standard output)")


SUPPRESSION_VERBS = (
    "suppression-list",
    "suppression-add",
    "suppression-remove",
    "suppression-import",
    "suppression-export",
)
