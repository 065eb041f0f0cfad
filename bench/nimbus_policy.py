"""The policy directories the nimbus harnesses run with.

Exports:
    write_bench_policy(dest, source) a policy/ tree minus the default shaping rate limits
    write_dkim_policy(dest, source)  the same plus a dkim_data.toml and a fresh RSA key
    BUNDLED_POLICY                   the current tree's policy/ (the default source)
    strip_default_rate_limits(text)  pure: shaping.toml without exactly those two lines
    DKIM_DATA, DKIM_DOMAIN, DKIM_SELECTOR

policy/shaping.toml's ["default"] caps every destination at max_message_rate 100/s and
max_connection_rate 100/min (KumoMTA's default file does the same). Those are a sender-
reputation choice, not relay capacity, and Postfix has none here; so the benchmark removes
exactly those two lines and keeps everything else the bundled policy does (queues.toml
tenants, sources, shaping resolution, bounce rules). The source tree is a parameter: the
baseline (bench.baseline) runs with its own revision's policy/, whose init.py imports that
revision's engine modules.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.load import SENDER
from bench.machine import REPO
from bench.support import BenchError, run

__all__ = [
    "BUNDLED_POLICY",
    "write_bench_policy",
    "write_dkim_policy",
    "strip_default_rate_limits",
    "DKIM_DATA",
    "DKIM_DOMAIN",
    "DKIM_SELECTOR",
]

DKIM_DOMAIN, DKIM_SELECTOR = SENDER.split("@")[1], "bench"
DKIM_DATA = f"""\
[base]
selector = "{DKIM_SELECTOR}"
key_dir = "keys"   # keys/{DKIM_DOMAIN}/{DKIM_SELECTOR}.key: openssl genrsa -traditional 2048

[domain."{DKIM_DOMAIN}"]
algo = "sha256"
"""
BUNDLED_POLICY = REPO / "policy"
_RATE_LINES = ('max_message_rate = "100/s"', 'max_connection_rate = "100/min"')


def strip_default_rate_limits(text: str) -> str:
    """shaping.toml without its two default rate-limit lines.

    Raises BenchError unless exactly two lines were removed: a changed file must make
    someone look at what the benchmark measures, not silently measure something else.
    """
    lines = text.splitlines(keepends=True)
    kept = [ln for ln in lines if not ln.startswith(_RATE_LINES)]
    if len(lines) - len(kept) != 2:
        raise BenchError(
            "policy/shaping.toml's default rate lines changed; update "
            "bench.nimbus_policy.strip_default_rate_limits"
        )
    return "".join(kept)


def write_bench_policy(dest: Path, source: Path = BUNDLED_POLICY) -> None:
    """Copy the policy directory ``source`` to ``dest`` without the default shaping rate
    limits (BenchError naming ``source`` if its shaping.toml does not have exactly them)."""
    if not (source / "shaping.toml").is_file():
        raise BenchError(f"{source}: no shaping.toml; is it a nimbus policy/ directory?")
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))
    shaping = dest / "shaping.toml"
    try:
        shaping.write_text(strip_default_rate_limits(shaping.read_text()))
    except BenchError as exc:
        raise BenchError(f"{source / 'shaping.toml'}: {exc}") from None


def write_dkim_policy(dest: Path, source: Path = BUNDLED_POLICY) -> None:
    """The bench policy plus a dkim_data.toml naming a fresh 2048-bit RSA key (PKCS#1, as
    KumoMTA's docs): the bundled init.py signs whenever dkim_data.toml configures a key, so
    signing is the only difference between nimbus and nimbus-dkim."""
    write_bench_policy(dest, source)
    key_dir = dest / "keys" / DKIM_DOMAIN
    key_dir.mkdir(parents=True)
    (dest / "dkim_data.toml").write_text(DKIM_DATA)
    key = key_dir / f"{DKIM_SELECTOR}.key"
    run(["openssl", "genrsa", "-traditional", "-out", str(key), "2048"], timeout=60)
