"""The dkim_data.toml helper (KumoMTA ``assets/policy-extras/dkim_sign.lua``): which DKIM
signatures a message gets, chosen by the domain of its From header.

Exports:
    DkimData                     a loaded dkim_data.toml
    DkimData.load(path, key_dir=None) -> DkimData     ConfigError names file/table/key
    DkimData.signers_for(msg) -> list[Signer]         552 5.6.0 when From is missing
    DkimData.sign(msg) -> None                        ``msg.dkim_sign`` for each of them
    DEFAULT_KEY_DIR              where ``<domain>/<selector>.key`` files are looked up

File format (KumoMTA's)::

    [base]                            # defaults for every block below
    selector = "s1"
    headers = ["From", "To", "Subject", "Date", "Message-ID"]   # default: dkimpy's list
    over_sign = false
    header_canonicalization = "relaxed"     # or "simple"
    body_canonicalization = "relaxed"
    expiration = 604800                     # seconds (x=); omit for none
    additional_signatures = ["esp"]         # [signature.*] blocks to add
    key_dir = "/etc/nimbus/dkim"            # Nimbus only; default DEFAULT_KEY_DIR

    [domain."example.com"]            # From domain; "*.example.com" matches subdomains
    selector = "s1"                   # + headers, over_sign, *_canonicalization, expiration
    algo = "sha256"                   # or "ed25519"
    filename = "/path/key.pem"        # default <key_dir>/<domain>/<selector>.key
    policy = "Always"                 # the only domain policy

    [signature."esp"]                 # an extra signature, whatever the From domain
    domain = "esp.example"            # d=
    policy = "OnlyIfMissingDomainBlock"   # or "Always" (the default)

Keys are read when the file is loaded, so ``nimbus validate`` reports a missing or
bad key file; only a wildcard domain without ``filename`` reads
``<key_dir>/<from-domain>/<selector>.key`` on first use (then cached). Relative paths
are relative to the TOML file. Vault (``vault_mount``, ``vault_path_prefix``) is not
supported: mount keys as files (a Kubernetes Secret). Where KumoMTA's validation
would only print a problem (a ``[signature]`` block nobody lists), loading fails.
"""

from __future__ import annotations

import dataclasses
import email.utils
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config.settings import ConfigError
from engine.dkim.signer import DEFAULT_HEADERS, DkimKeyError, Signer
from engine.policy.events import reject
from engine.policy.helpers import load_document, table_name
from engine.policy.message import PolicyMessage

__all__ = ["DkimData", "DEFAULT_KEY_DIR"]

DEFAULT_KEY_DIR = Path("/opt/kumomta/etc/dkim")  # KumoMTA's, so its files work unchanged

_ALGOS = {"sha256": "rsa-sha256", "ed25519": "ed25519-sha256"}
_SIGNER_KEYS: dict[str, type] = {
    "selector": str,
    "headers": list,
    "over_sign": bool,
    "header_canonicalization": str,
    "body_canonicalization": str,
    "expiration": int,
    "policy": str,
}
_BASE_KEYS = {**_SIGNER_KEYS, "additional_signatures": list, "key_dir": str}
_DOMAIN_KEYS = {**_SIGNER_KEYS, "algo": str, "filename": str}
_SIGNATURE_KEYS = {**_DOMAIN_KEYS, "domain": str}
_VAULT_KEYS = ("vault_mount", "vault_path_prefix")
_POLICIES = {"domain": ("Always",), "signature": ("Always", "OnlyIfMissingDomainBlock")}


@dataclass(frozen=True, slots=True, kw_only=True)
class _Block:
    """One ``[domain.*]`` or ``[signature.*]`` table, resolved against ``[base]``.

    signer: ready to use (key loaded), or None for a wildcard domain whose key path
        depends on the matched From domain (``key_dir``/domain/selector.key).
    """

    table: str
    policy: str
    signer: Signer | None
    algo: str = "sha256"
    options: Mapping[str, Any] = field(default_factory=dict)


class DkimData:
    """A loaded dkim_data.toml; see the module docstring for the format."""

    def __init__(
        self,
        *,
        domains: dict[str, _Block],
        signatures: dict[str, _Block],
        additional: tuple[str, ...],
        key_dir: Path,
    ) -> None:
        self.domains = domains
        self.signatures = signatures
        self.additional = additional
        self.key_dir = key_dir
        self._per_domain: dict[tuple[str, str], Signer] = {}

    @classmethod
    def load(cls, path: str | Path, *, key_dir: str | Path | None = None) -> DkimData:
        """Parse ``path`` and load every key it names.

        key_dir: where ``<domain>/<selector>.key`` files live (overrides ``[base] key_dir``).
        Raises ConfigError "<file>: [<table>] <key>: ..." for any problem.
        """
        where = str(path)
        doc = load_document(path)
        unknown = sorted(set(doc) - {"base", "domain", "signature"})
        if unknown:
            raise ConfigError(
                f"{where}: unknown table [{unknown[0]}] (known: base, domain, signature)"
            )
        base = _table(doc, "base", where)
        _check_keys(base, _BASE_KEYS, where, "base")
        _check_policy(base, where, "base", "domain")
        here = Path(path).parent
        chosen = key_dir if key_dir is not None else base.get("key_dir")
        resolved_dir = here / chosen if chosen is not None else DEFAULT_KEY_DIR
        _signer_options({"selector": "", **base}, where, "base")  # checked even if unused
        additional = tuple(base.get("additional_signatures", ()))
        signature_tables = _table(doc, "signature", where)
        for name in additional:
            if name not in signature_tables:
                raise ConfigError(
                    f"{where}: [base] additional_signatures: {name!r} has no "
                    f"[{table_name('signature', name)}] table"
                )
        for name in signature_tables:
            if name not in additional:
                raise ConfigError(
                    f"{where}: [{table_name('signature', name)}]: not listed in "
                    f"[base] additional_signatures, so it would never be used"
                )
        data = cls(domains={}, signatures={}, additional=additional, key_dir=resolved_dir)
        for name, raw in _table(doc, "domain", where).items():
            data.domains[name.lower().rstrip(".")] = data._block(
                where, here, base, "domain", name, raw
            )
        for name, raw in signature_tables.items():
            data.signatures[name] = data._block(where, here, base, "signature", name, raw)
        return data

    def _block(
        self, where: str, here: Path, base: Mapping[str, Any], kind: str, name: str, raw: Any
    ) -> _Block:
        table = table_name(kind, name)
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: [{table}] must be a table")
        _check_keys(raw, _SIGNATURE_KEYS if kind == "signature" else _DOMAIN_KEYS, where, table)
        _check_policy(raw, where, table, kind)
        merged = {k: v for k, v in base.items() if k in _SIGNER_KEYS} | raw
        if "selector" not in merged:
            raise ConfigError(f"{where}: [{table}] selector: missing, and [base] has none")
        if kind == "signature" and "domain" not in raw:
            raise ConfigError(f"{where}: [{table}] domain: missing (the d= to sign as)")
        algo = merged.get("algo", "sha256")
        if algo not in _ALGOS:
            raise ConfigError(f"{where}: [{table}] algo: must be sha256 or ed25519, not {algo!r}")
        options = _signer_options(merged, where, table)
        policy = merged.get("policy", "Always")
        domain = raw["domain"] if kind == "signature" else name.lower().rstrip(".")
        wildcard = domain.startswith("*.")
        if "filename" in raw:
            key_file = here / raw["filename"]
        elif wildcard:  # the key path depends on the From domain: read on first use
            return _Block(table=table, policy=policy, signer=None, algo=algo, options=options)
        else:
            key_file = self.key_dir / domain / f"{merged['selector']}.key"
        signer = _make_signer(algo, domain.removeprefix("*."), key_file, options, where, table)
        return _Block(table=table, policy=policy, signer=signer, algo=algo, options=options)

    # -- selection ------------------------------------------------------------------

    def signers_for(self, msg: PolicyMessage) -> list[Signer]:
        """The signers for ``msg``: its From domain's block, then additional signatures.

        Rejects with 552 5.6.0 when the message has no From header (KumoMTA's reply) —
        unless the file names nothing to sign with (only ``[base]``): then there is no
        reason to refuse anything, and the answer is no signers.
        Raises DkimKeyError when a wildcard domain's key file cannot be read.
        """
        if not self.domains and not self.additional:
            return []
        value = msg.get_first_named_header_value("From")
        if value is None:
            reject(552, "5.6.0 DKIM signing requires a From header")
        address = email.utils.parseaddr(value)[1]
        domain = address.rpartition("@")[2].lower().rstrip(".")
        if "@" not in address or not domain:
            reject(552, "5.6.0 DKIM signing requires a From header with a domain")
        signers = []
        block, pattern = self._match(domain)
        if block is not None:
            signers.append(self._domain_signer(block, pattern, domain))
        for name in self.additional:
            extra = self.signatures[name]
            if extra.policy == "OnlyIfMissingDomainBlock" and block is not None:
                continue
            assert extra.signer is not None
            signers.append(extra.signer)
        return signers

    def sign(self, msg: PolicyMessage) -> None:
        """Record every signature ``signers_for(msg)`` names (``msg.dkim_sign``)."""
        for signer in self.signers_for(msg):
            msg.dkim_sign(signer)

    def _match(self, domain: str) -> tuple[_Block | None, str]:
        """The exact block, else the most specific ``*.suffix`` block (kumo.domain_map)."""
        if domain in self.domains:
            return self.domains[domain], domain
        labels = domain.split(".")
        for i in range(1, len(labels)):
            wildcard = "*." + ".".join(labels[i:])
            if wildcard in self.domains:
                return self.domains[wildcard], wildcard
        return None, ""

    def _domain_signer(self, block: _Block, pattern: str, domain: str) -> Signer:
        """d= is the From domain itself, also when a wildcard matched (as KumoMTA)."""
        if block.signer is not None and pattern == domain:
            return block.signer
        signer = self._per_domain.get((pattern, domain))
        if signer is None:
            if block.signer is not None:
                signer = dataclasses.replace(block.signer, domain=domain)
            else:
                key_file = self.key_dir / domain / f"{block.options['selector']}.key"
                signer = _build(block.algo, domain, key_file, block.options)
            self._per_domain[(pattern, domain)] = signer
        return signer


# -- parsing helpers ------------------------------------------------------------------


def _table(doc: Mapping[str, Any], name: str, where: str) -> dict[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{name}] must be a table")
    return value


def _check_keys(raw: Mapping[str, Any], known: Mapping[str, type], where: str, table: str) -> None:
    for key, value in raw.items():
        if key in _VAULT_KEYS:
            raise ConfigError(
                f"{where}: [{table}] {key}: HashiCorp Vault is not supported; "
                f"mount the keys as files (e.g. a Kubernetes Secret) and set "
                f"filename or key_dir"
            )
        kind = known.get(key)
        if kind is None:
            raise ConfigError(
                f"{where}: [{table}] {key}: unknown key (known keys: {', '.join(sorted(known))})"
            )
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(
                f"{where}: [{table}] {key}: expected {kind.__name__}, got {type(value).__name__}"
            )
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: [{table}] {key}: expected a list of strings")


def _check_policy(raw: Mapping[str, Any], where: str, table: str, kind: str) -> None:
    if "policy" in raw and raw["policy"] not in _POLICIES[kind]:
        raise ConfigError(
            f"{where}: [{table}] policy: must be one of "
            f"{', '.join(_POLICIES[kind])}, not {raw['policy']!r}"
        )


def _signer_options(merged: Mapping[str, Any], where: str, table: str) -> dict[str, Any]:
    options: dict[str, Any] = {
        "selector": merged["selector"],
        "headers": tuple(merged.get("headers", DEFAULT_HEADERS)),
        "over_sign": merged.get("over_sign", False),
        "expiration": merged.get("expiration"),
    }
    for key in ("header_canonicalization", "body_canonicalization"):
        value = str(merged.get(key, "relaxed")).lower()  # KumoMTA writes "Relaxed"
        if value not in ("relaxed", "simple"):
            raise ConfigError(
                f"{where}: [{table}] {key}: must be relaxed or simple, not {merged[key]!r}"
            )
        options[key] = value
    if not any(h.lower() == "from" for h in options["headers"]):
        raise ConfigError(f"{where}: [{table}] headers: must include From (RFC 6376 5.4)")
    if options["expiration"] is not None and options["expiration"] <= 0:
        raise ConfigError(f"{where}: [{table}] expiration: must be a positive number of seconds")
    return options


def _make_signer(
    algo: str, domain: str, key_file: Path, options: Mapping[str, Any], where: str, table: str
) -> Signer:
    try:
        return _build(algo, domain, key_file, options)
    except DkimKeyError as exc:
        raise ConfigError(f"{where}: [{table}] filename: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: [{table}]: {exc}") from None


def _build(algo: str, domain: str, key_file: Path, options: Mapping[str, Any]) -> Signer:
    make = Signer.rsa_sha256 if algo == "sha256" else Signer.ed25519_sha256
    opts = dict(options)
    selector = opts.pop("selector")
    return make(domain, selector, key_file=key_file, **opts)
