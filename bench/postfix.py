"""The Postfix harness: a throwaway store-and-forward instance of the Debian package.

Exports:
    PostfixHarness                 MtaHarness for Postfix (own config, queue and data dirs)
    postfix_commands(...)          pure: the shell lines its start() amounts to
    rewrite_master_cf(text, port)  pure: the ``smtp inet`` service bound to 127.0.0.1:port
    scan_maillog(lines)            pure: delivery statuses and problem lines of a maillog
    etc_postfix_fingerprint()      hash of /etc/postfix, to prove a run left it alone

The system /etc/postfix is only read (master.cf copied); everything else is Postfix's
default: fsync before 250, ``in_flow_delay=1s``, the connection cache on.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import MtaHarness, Placement
from bench.sampling import CpuSample, gone_or_zombie, tree_cpu, tree_rss_kb
from bench.support import BenchError, free_port, log, run, smtp_banner_ok, wait_until

__all__ = [
    "PostfixHarness",
    "postfix_commands",
    "rewrite_master_cf",
    "scan_maillog",
    "MaillogScan",
    "etc_postfix_fingerprint",
]

# Logged once per smtpd process start on a Debian install made with "No configuration"
# (default alias_maps = hash:/etc/aliases, nis:mail.aliases; no aliases.db, no NIS).
# Harmless here (no local delivery); we keep Postfix's defaults, so they are expected.
BENIGN = (
    "open database /etc/aliases.db: No such file or directory",
    "dict_nis_init: NIS domain name not set",
)
_STATUSES = ("sent", "deferred", "bounced")


def postfix_settings(root: Path, sink_port: int | str, log_to_file: bool) -> list[str]:
    """main.cf settings of the instance whose directories are under ``root``."""
    settings = [
        f"queue_directory={root / 'queue'}",
        f"data_directory={root / 'data'}",
        "compatibility_level=3.6",
        "mydestination=",
        f"relayhost=[127.0.0.1]:{sink_port}",
        "mynetworks=127.0.0.0/8",
        "smtp_destination_concurrency_limit=50",
        "default_process_limit=200",
        "inet_interfaces=127.0.0.1",
    ]
    if log_to_file:  # as a real install logs to syslog
        settings += [f"maillog_file={root / 'maillog'}", f"maillog_file_prefixes={root}"]
    return settings


def postfix_commands(
    root: Path, port: int | str, sink_port: int | str, log_to_file: bool
) -> list[str]:
    """The shell lines that set up and start the instance (what the report prints)."""
    conf, queue, data = root / "conf", root / "queue", root / "data"
    return [
        f"mkdir -p {conf} {queue} {data}; chown postfix {data}; "
        f"cp /etc/postfix/master.cf {conf}/; : > {conf}/main.cf",
        f"postconf -c {conf} -e " + " ".join(postfix_settings(root, sink_port, log_to_file)),
        f"postconf -c {conf} -F -e '*/*/chroot = n'",
        f"sed -i 's/^smtp\\(\\s\\+inet\\)/127.0.0.1:{port}\\1/' {conf}/master.cf",
        f"postfix -c {conf} start   # ... and 'postfix -c {conf} stop' after the trial",
    ]


def rewrite_master_cf(text: str, port: int) -> str:
    """master.cf with the ``smtp inet`` service bound to 127.0.0.1:port.

    Raises BenchError if there is no such line, or if another inet service would bind
    elsewhere (the benchmark must listen on 127.0.0.1 only).
    """
    text, n = re.subn(r"(?m)^smtp(\s+inet\s)", rf"127.0.0.1:{port}\1", text, count=1)
    if n != 1:
        raise BenchError("no 'smtp inet' line in master.cf")
    for line in text.splitlines():
        cols = line.split()
        if (
            len(cols) >= 2
            and not line[0].isspace()
            and not line.startswith("#")
            and cols[1] == "inet"
            and not cols[0].startswith("127.0.0.1:")
        ):
            raise BenchError(f"unexpected inet service in master.cf: {line}")
    return text


@dataclass(frozen=True, slots=True, kw_only=True)
class MaillogScan:
    status: dict[str, int] = field(default_factory=dict)  # sent/deferred/bounced/other_status
    problems: list[str] = field(default_factory=list)  # warning/error/fatal/panic, not benign
    benign: int = 0


def scan_maillog(lines: list[str]) -> MaillogScan:
    """Count ``status=`` per delivery and collect warning/error lines that are not BENIGN."""
    status = {"sent": 0, "deferred": 0, "bounced": 0, "other_status": 0}
    problems: list[str] = []
    benign = 0
    for line in lines:
        m = re.search(r" status=(\w+)", line)
        if m:
            status[m.group(1) if m.group(1) in _STATUSES else "other_status"] += 1
        if re.search(r"\b(warning|error|fatal|panic):", line):
            if any(b in line for b in BENIGN):
                benign += 1
            else:
                problems.append(line.rstrip())
    return MaillogScan(status=status, problems=problems, benign=benign)


def etc_postfix_fingerprint() -> str:
    """Hash of names, sizes, mtimes and contents under /etc/postfix (to prove we left it alone)."""
    h = hashlib.sha256()
    root = Path("/etc/postfix")
    if not root.exists():
        return "absent"
    for p in sorted(root.rglob("*")):
        with contextlib.suppress(OSError):
            st = p.lstat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}|{st.st_mode}\n".encode())
            if p.is_file() and not p.is_symlink():
                h.update(p.read_bytes())
    return h.hexdigest()


class PostfixHarness(MtaHarness):
    """A throwaway Postfix: own config/queue/data dirs; relays everything to the sink.

    log_to_file: ``maillog_file`` in its directory (default on, like a real install's
    syslog); its delivery statuses are then cross-checked after the trial.
    """

    name = "postfix"

    def __init__(self, place: Placement, log_to_file: bool = True):
        self.place = place
        self.dir = place.workdir / "postfix"
        self.conf = self.dir / "conf"
        self.queue = self.dir / "queue"
        self.maillog = self.dir / "maillog"
        self.port = free_port()
        self.log_to_file = log_to_file
        self.master_pid: int | None = None
        self._started = False

    def commands(self) -> list[str]:
        return postfix_commands(self.dir, self.port, self.place.sink_port, self.log_to_file)

    def start(self) -> None:
        data = self.dir / "data"
        for d in (self.conf, self.queue, data):
            d.mkdir(parents=True)
        shutil.chown(data, user="postfix")
        src = Path("/etc/postfix/master.cf")
        if not src.exists():
            src = Path("/usr/share/postfix/master.cf.dist")
        master_cf = self.conf / "master.cf"
        shutil.copyfile(src, master_cf)
        (self.conf / "main.cf").write_text("")
        settings = postfix_settings(self.dir, self.place.sink_port, self.log_to_file)
        run(["postconf", "-c", str(self.conf), "-e", *settings])
        run(["postconf", "-c", str(self.conf), "-F", "-e", "*/*/chroot = n"])
        try:
            master_cf.write_text(rewrite_master_cf(master_cf.read_text(), self.port))
        except BenchError as exc:
            raise BenchError(f"{master_cf} (copied from {src}): {exc}") from None
        run(["postfix", "-c", str(self.conf), "check"], timeout=60)
        self._started = True  # from here on, stop() must run
        cp = run(["postfix", "-c", str(self.conf), "start"], timeout=60, check=False)
        if cp.returncode != 0:
            raise BenchError(
                f"postfix start failed rc={cp.returncode}: {cp.stderr.strip()} "
                f"{cp.stdout.strip()}\nmaillog tail:\n{self._maillog_tail()}"
            )

    def ready(self) -> None:
        pidfile = self.queue / "pid" / "master.pid"
        wait_until(
            lambda: pidfile.exists() and pidfile.read_text().strip().isdigit(),
            30,
            f"Postfix master pid file {pidfile}",
        )
        master = self.master_pid = int(pidfile.read_text().strip())
        wait_until(
            lambda: smtp_banner_ok(self.port),
            30,
            f"Postfix smtpd banner on 127.0.0.1:{self.port}",
            alive=lambda: (
                f"postfix master exited; maillog tail:\n{self._maillog_tail()}"
                if gone_or_zombie(master)
                else None
            ),
        )

    def _maillog_tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.maillog.read_text(errors="replace").splitlines()[-n:])
        return "(no maillog)"

    def cpu(self) -> CpuSample:
        """master + its live children + the children master already reaped."""
        assert self.master_pid is not None
        return tree_cpu(self.master_pid)

    def rss_kb(self) -> int:
        assert self.master_pid is not None
        return tree_rss_kb(self.master_pid)

    def extra_stats(self) -> dict[str, Any]:
        return {"instance_rss_kb_at_end": self.rss_kb()}

    def drained(self) -> bool:
        cp = run(["postqueue", "-c", str(self.conf), "-p"], check=False, timeout=30)
        return "Mail queue is empty" in cp.stdout

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        cp = run(["postfix", "-c", str(self.conf), "stop"], check=False, timeout=60)
        if cp.returncode != 0:
            log(f"warning: postfix stop rc={cp.returncode}: {cp.stderr.strip()}; trying abort")
            run(["postfix", "-c", str(self.conf), "abort"], check=False, timeout=30)
        master = self.master_pid
        if master is None:
            return
        try:
            wait_until(lambda: gone_or_zombie(master), 30, "postfix master to exit")
        except BenchError:
            log(f"warning: postfix master {master} still running; SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(master, signal.SIGKILL)

    def post_stats(self) -> dict[str, Any]:
        """After stop: delivery statuses and problem lines from the instance's maillog."""
        if not self.log_to_file:
            return {}
        lines: list[str] = []
        with contextlib.suppress(OSError):
            lines = self.maillog.read_text(errors="replace").splitlines()
        scan = scan_maillog(lines)
        path = self.place.outdir / f"{self.place.tag}.maillog-problems.txt"
        path.write_text("\n".join(scan.problems) + ("\n" if scan.problems else ""))
        return {
            "maillog_status": scan.status,
            "maillog_problem_lines": len(scan.problems),
            "maillog_benign_lines": scan.benign,
            "maillog_problems_file": path.name,
        }
