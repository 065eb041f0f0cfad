"""The ``nimbus`` command: one console script, one subcommand per role.

Exports:
    main(argv) -> exit code

Subcommands:
    nimbus mta       run one MTA node in the foreground (JSON logs on stderr); with
                     ``--workers N`` (N > 1) a supervisor of N engine processes
    nimbus tsa       run the traffic-shaping automation service
    nimbus sink      run the sink (accepts and discards; smart mode from a TOML file)
    nimbus validate  check settings and policy
    nimbus cluster up   run the Helm chart's pods as local processes (a laptop cluster)
    nimbus queue-summary | bounce | suspend | suspend-ready-q | rebind | inspect-message | ...
                     admin verbs over a node's admin API (--endpoint)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from engine import __version__
from engine.admin import cli as admin_cli
from engine.cluster import command as cluster
from engine.config.env_names import describe_unknown_env, unknown_env_names
from engine.config.settings import ConfigError, dotted_tree, load_settings
from engine.logs import diagnostics as diag
from engine.policy.events import PolicyLoadError
from engine.reception.listen import ListenError
from engine.storage.spool import SpoolLocked
from engine.workers import supervisor
from engine.workers.cpu import default_workers
from engine.workers.role import WorkerRole

__all__ = ["main", "startup_error"]

log = logging.getLogger("nimbus.cli")

_MTA_FLAGS = {
    "smtp_listen": "smtp.listen",
    "http_listen": "http.listen",
    "spool_dir": "spool.dir",
    "log_dir": "log.dir",
    "policy_dir": "policy.dir",
    "node_id": "node_id",
    "workers": "node.workers",
}


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Flags as a settings tree: the named flags, then each ``--set section.key=value``."""
    dotted = {
        key: getattr(args, attr)
        for attr, key in _MTA_FLAGS.items()
        if getattr(args, attr, None) is not None
    }
    for item in getattr(args, "set", None) or []:
        path, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"flags: --set {item!r} must be section.key=value")
        dotted[path] = value
    return dotted_tree(dotted)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nimbus", description="Nimbus mail transfer agent")
    parser.add_argument("--version", action="version", version=f"nimbus {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    mta = sub.add_parser("mta", help="run one MTA node in the foreground")
    mta.add_argument("--config", help="TOML settings file (default: $NIMBUS_CONFIG)")
    mta.add_argument("--smtp-listen", help="SMTP host:port (default 0.0.0.0:2525)")
    mta.add_argument("--http-listen", help="HTTP host:port (default 0.0.0.0:8000)")
    mta.add_argument("--spool-dir", help="spool directory")
    mta.add_argument("--log-dir", help="log-record directory")
    mta.add_argument("--policy-dir", help="policy directory")
    mta.add_argument("--node-id", help="node identity in log records")
    mta.add_argument(
        "--workers",
        type=int,
        help="engine processes (default: the cgroup CPU quota, else the CPU count; 1: one process)",
    )
    # Set by the supervisor for each worker it starts (engine/workers/supervisor.py).
    mta.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    mta.add_argument("--worker-runtime", help=argparse.SUPPRESS)
    mta.add_argument("--worker-ready-fd", type=int, default=-1, help=argparse.SUPPRESS)
    mta.add_argument("--worker-supervisor", type=int, default=0, help=argparse.SUPPRESS)
    mta.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="any setting, e.g. --set smtp.max_recipients=500",
    )
    for role, text in (
        ("tsa", "run the traffic-shaping automation service"),
        ("sink", "run the sink: an SMTP receiver that discards (test traffic)"),
    ):
        cmd = sub.add_parser(role, help=text)
        cmd.add_argument("--config", help="TOML settings file (default: $NIMBUS_CONFIG)")
        cmd.add_argument(
            "--set",
            action="append",
            metavar="SECTION.KEY=VALUE",
            help="any setting, e.g. --set tsa.listen=0.0.0.0:8008",
        )
    admin_cli.add_subcommands(sub)
    cluster.add_subcommand(sub)
    validate = sub.add_parser("validate", help="load and check the settings and the policy")
    validate.add_argument("--config", help="TOML settings file (default: $NIMBUS_CONFIG)")
    validate.add_argument(
        "--policy-dir",
        "--policy",  # the earlier spelling, kept working
        dest="policy_dir",
        help="policy directory, as for mta (default: the configured one)",
    )
    return parser


class _Collect(logging.Handler):
    """Keeps the ``warning`` field of each load-time warning (MTA-STS, DANE)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.warnings: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = getattr(record, "warning", None)
        if text and text not in self.warnings:
            self.warnings.append(text)


def _validate(settings: Any) -> int:
    """``nimbus validate``: load everything the node would load. Prints unknown NIMBUS_*
    names and not-implemented warnings (exit 0), or the first error, such as an option
    that is not supported (exit 1)."""
    from engine.policy.events import EVENTS
    from engine.policy.loader import load_policy

    for line in describe_unknown_env(unknown_env_names(os.environ)):
        print(f"nimbus validate: warning: {line}")
    collect = _Collect()
    config_log = logging.getLogger("nimbus.config")
    config_log.addHandler(collect)
    try:
        registry = load_policy(settings.policy.dir)
    except (ConfigError, PolicyLoadError) as exc:
        print(f"nimbus validate: {exc}", file=sys.stderr)
        return 1
    finally:
        config_log.removeHandler(collect)
    for text in collect.warnings:
        print(f"nimbus validate: warning: {text}")
    handled = sorted(name for name, event in EVENTS.items() if registry.has(event))
    print(f"policy {settings.policy.dir}: OK; handlers for {', '.join(handled) or 'no events'}")
    return 0


def _report_unknown_env() -> None:
    """One warning diagnostic naming each unknown NIMBUS_* name and its closest match."""
    unknown = unknown_env_names(os.environ)
    if unknown:
        log.warning(
            "unknown_environment_names",
            extra={"unknown": {name: close for name, close in unknown}},
        )


def _run(coro: Any, event_loop: str = "auto") -> None:
    """Run ``coro`` on uvloop (``auto`` when it is installed, the ``fast`` extra) or on
    the standard library's loop (``[node] event_loop``, NIMBUS_NODE_EVENT_LOOP)."""
    if event_loop != "asyncio":
        try:
            import uvloop
        except ImportError:  # the extra is not installed: the stdlib loop works, slower
            if event_loop == "uvloop":
                coro.close()
                raise ConfigError(
                    "[node] event_loop: uvloop is not installed "
                    "(pip install 'nimbus-mta[fast]', or event_loop = \"auto\")"
                ) from None
        else:
            uvloop.run(coro)
            return
    asyncio.run(coro)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    if args.command in admin_cli.VERBS:
        return admin_cli.run(args)  # talks to a node's admin API; no local settings
    if args.command == "cluster":
        return args.cluster_run(args)  # renders the chart; pods get their own settings
    try:
        settings = load_settings(args.config, overrides=_overrides(args))
    except ConfigError as exc:
        print(f"nimbus: configuration error: {exc}", file=sys.stderr)
        return 2
    diag.configure(settings.log.level)
    if args.command == "validate":
        return _validate(settings)
    if getattr(args, "worker_index", None) is None:  # the supervisor reported them
        _report_unknown_env()
    if args.command == "tsa":
        from tsa.app import run as run_tsa

        return _serve(run_tsa(settings), settings.node.event_loop)
    if args.command == "sink":
        from sink.app import run as run_sink

        return _serve(run_sink(settings), settings.node.event_loop)
    if args.command == "mta":
        return _mta(args, argv, settings)
    return 0


def _mta(args: argparse.Namespace, argv: list[str], settings: Any) -> int:
    """One process, a worker of a node (``--worker-index``), or the supervisor of N."""
    from engine.app import run_mta

    if args.worker_index is not None:
        supervisor.die_with_parent(args.worker_supervisor or os.getppid())
        role = WorkerRole(
            index=args.worker_index,
            count=settings.node.workers,
            runtime=Path(args.worker_runtime),
            ready_fd=args.worker_ready_fd,
        )
        return _serve(run_mta(settings, role), settings.node.event_loop)
    workers = settings.node.workers or default_workers()
    if workers == 1:
        return _serve(run_mta(settings), settings.node.event_loop)
    if settings.suppression.enabled and not settings.redis.url:
        print(
            "nimbus: [suppression] enabled with node.workers > 1 needs redis.url "
            "(NIMBUS_REDIS_URL): without Redis each worker keeps its own copy of the list; "
            "set NIMBUS_NODE_WORKERS=1 or configure Redis",
            file=sys.stderr,
        )
        return 2
    log.info("starting_workers", extra={"workers": workers})
    node = supervisor.Supervisor(settings, workers, argv)
    code = 0

    async def run() -> None:
        nonlocal code
        code = await node.run()

    return _serve(run(), settings.node.event_loop) or code


def _serve(coro: Any, event_loop: str = "auto") -> int:
    """Run a service coroutine in the foreground. An error that stops it from starting
    (settings, policy, a busy port, a locked spool) is one line on stderr and exit 2."""
    try:
        _run(coro, event_loop)
    except (ConfigError, PolicyLoadError, ListenError, SpoolLocked, BaseExceptionGroup) as exc:
        line = startup_error(_first_leaf(exc))
        if line is None:
            raise
        print(line, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def startup_error(exc: BaseException) -> str | None:
    """The one line ``nimbus`` prints for an error that stops a service from starting
    (cause and fix), or None for any other exception (a bug: its traceback is wanted)."""
    if isinstance(exc, ConfigError):
        text = f"nimbus: configuration error: {exc}"
    elif isinstance(exc, PolicyLoadError):
        text = f"nimbus: policy error: {exc}; fix the policy (check it with nimbus validate)"
    elif isinstance(exc, (ListenError, SpoolLocked)):
        text = f"nimbus: {exc}"
    else:
        return None
    return " ".join(text.split())  # one line, whatever the message held


def _first_leaf(exc: BaseException) -> BaseException:
    """The first non-group exception inside (TaskGroup wraps failures in groups)."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


if __name__ == "__main__":
    sys.exit(main())
