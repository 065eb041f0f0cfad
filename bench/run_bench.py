#!/usr/bin/env python3
"""Side-by-side relay benchmark: Postfix (Debian package) vs ``nimbus mta`` in sink mode.

Not a pytest test. Run as root on a machine with the Debian ``postfix`` package installed:

    python3 bench/run_bench.py                         # 10,000 msgs x {4096, 40960} B x 3 runs
    python3 bench/run_bench.py --messages 1000 --runs 1  # smoke run

Per trial (one MTA, one message size):
  * a fresh ``smtp-sink -c -m 1024 -u nobody 127.0.0.1:SINKPORT 1024`` is started;
  * a fresh MTA instance relays everything to it: a throwaway Postfix (own config, queue and
    data directories in a temp dir; the system /etc/postfix is only read, never written) or
    ``nimbus mta`` with NIMBUS_SINK_ENABLED=true and fresh spool/log directories;
  * ``smtp-source -s S -m N -l SIZE -f bench@source.example -t user@sink.example 127.0.0.1:PORT``
    is the load;
  * completion = the sink's own ``-c`` counter (``mesg=``, printed to stdout separated by
    carriage returns, one update per received DATA) reaching N. The same method for both MTAs.

Measured: end-to-end msgs/s = N / (t(sink reached N) - t(smtp-source started)); ingress msgs/s =
N / (t(smtp-source exited) - t(start)); CPU ms/msg of the MTA's processes (nimbus: its own
process; Postfix: master + its live children + children master already reaped, i.e.
utime+stime+cutime+cstime); whole-box CPU ms/msg (non-idle jiffies of /proc/stat, includes the
load generator, the sink and any noise); nimbus's peak RSS (VmHWM).

Postfix and nimbus trials are interleaved (the order alternates per run) and medians are
reported. Raw per-trial JSON, nimbus's stderr and Postfix's problem log lines go to
bench/results/<timestamp>/; a summary section is written into BENCHMARKS.md.

``--dkim`` adds a third MTA, ``nimbus-dkim``: the same nimbus with a policy that DKIM-signs
every message (dkim_data.toml, a fresh 2048-bit RSA key from ``openssl genrsa`` per trial,
relaxed/relaxed). Its CPU includes its signing worker process. Such a run writes its own
section of BENCHMARKS.md (DKIM off vs on, side by side) and leaves the relay section alone.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
SENDER = "bench@source.example"
RECIPIENT = "user@sink.example"
MD_BEGIN = "<!-- BEGIN run_bench.py results (generated; replaced on every run) -->"
MD_END = "<!-- END run_bench.py results -->"
MD_DKIM_BEGIN = (
    "<!-- BEGIN run_bench.py --dkim results (generated; replaced on every --dkim run) -->"
)
MD_DKIM_END = "<!-- END run_bench.py --dkim results -->"
NIMBUS_MTAS = ("nimbus", "nimbus-dkim")
DKIM_DOMAIN, DKIM_SELECTOR = SENDER.split("@")[1], "bench"
DKIM_DATA = f"""\
[base]
selector = "{DKIM_SELECTOR}"
key_dir = "keys"   # keys/{DKIM_DOMAIN}/{DKIM_SELECTOR}.key: openssl genrsa -traditional 2048

[domain."{DKIM_DOMAIN}"]
algo = "sha256"
"""


class BenchError(RuntimeError):
    """A trial or setup step failed; the message says what and where to look."""


# --------------------------------------------------------------------------- small helpers


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(
    cmd: list[str], timeout: float = 60, check: bool = True, **kw: Any
) -> subprocess.CompletedProcess:
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise BenchError(f"command timed out after {timeout}s: {' '.join(cmd)}") from None
    if check and cp.returncode != 0:
        raise BenchError(
            f"command failed (rc={cp.returncode}): {' '.join(cmd)}\n"
            f"stdout: {cp.stdout.strip()}\nstderr: {cp.stderr.strip()}"
        )
    return cp


def wait_until(
    pred: Callable[[], bool],
    deadline_s: float,
    what: str,
    interval: float = 0.05,
    alive: Callable[[], str | None] | None = None,
) -> None:
    end = time.monotonic() + deadline_s
    while True:
        if pred():
            return
        if alive is not None:
            dead = alive()
            if dead:
                raise BenchError(f"{what}: {dead}")
        if time.monotonic() > end:
            raise BenchError(f"timed out after {deadline_s}s waiting for {what}")
        time.sleep(interval)


def smtp_banner_ok(port: int) -> bool:
    """True when something on 127.0.0.1:port answers with a 220 banner (then QUIT)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(5)
            banner = s.recv(512)
            with contextlib.suppress(OSError):
                s.sendall(b"QUIT\r\n")
                s.recv(512)
            return banner.startswith(b"220")
    except OSError:
        return False


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime+stime+cutime+cstime in jiffies) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            data = fh.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    # fields[0] is state (field 3); utime..cstime are fields 14..17 -> indexes 11..14
    return int(fields[1]), sum(int(x) for x in fields[11:15])


def proc_cpu_jiffies(pid: int) -> int:
    st = proc_stat(pid)
    if st is None:
        raise BenchError(f"process {pid} is gone")
    return st[1]


def tree_cpu_jiffies(root_pid: int) -> tuple[int, int]:
    """CPU of root + its live children (each incl. reaped grandchildren); (jiffies, n_procs).

    Children that root has already reaped are in root's cutime/cstime, so the total is
    monotonic while processes come and go (Postfix daemons exit after max_use / max_idle).
    """
    total = proc_cpu_jiffies(root_pid)
    n = 1
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        st = proc_stat(int(entry.name))
        if st is not None and st[0] == root_pid:
            total += st[1]
            n += 1
    return total, n


def tree_rss_kb(root_pid: int) -> int:
    pids = [root_pid] + [
        int(e.name)
        for e in os.scandir("/proc")
        if e.name.isdigit() and (proc_stat(int(e.name)) or (0, 0))[0] == root_pid
    ]
    return sum(proc_status_kb(p, "VmRSS") or 0 for p in pids)


def proc_status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def box_busy_jiffies() -> int:
    """Non-idle jiffies of the whole machine: user+nice+system+irq+softirq (no idle/iowait/steal)."""
    with open("/proc/stat") as fh:
        parts = fh.readline().split()
    user, nice, system, idle, iowait, irq, softirq = (int(x) for x in parts[1:8])
    return user + nice + system + irq + softirq


def stop_process(proc: subprocess.Popen, name: str, term_timeout: float = 10) -> None:
    """SIGTERM, wait, then SIGKILL: only the process we started, by its pid."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=term_timeout)
    except subprocess.TimeoutExpired:
        log(f"warning: {name} (pid {proc.pid}) ignored SIGTERM for {term_timeout}s; SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    pf = run(["postconf", "-d", "-h", "mail_version"], check=False, timeout=10).stdout.strip()
    ver = ""
    with contextlib.suppress(Exception):
        ver = run(
            [sys.executable, "-c", "import engine; print(engine.__version__)"],
            check=False,
            timeout=20,
            cwd=REPO,
        ).stdout.strip()
    try:
        rev = run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"], check=False, timeout=10
        ).stdout.strip()
    except BenchError:
        rev = ""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "mem_gib": mem_gib,
        "python": platform.python_version(),
        "postfix": pf,
        "nimbus": ver,
        "git": rev,
        "hostname": socket.gethostname(),
    }


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


# --------------------------------------------------------------------------- the sink


class Sink:
    """smtp-sink with a thread that parses its ``-c`` counter (``mesg=N``) from stdout."""

    COUNTER = re.compile(rb"mesg=(\d+)")

    def __init__(self, port: int, target: int, outdir: Path):
        self.port = port
        self.target = target
        self.cmd = ["smtp-sink", "-c", "-m", "1024", "-u", "nobody", f"127.0.0.1:{port}", "1024"]
        self.count = 0
        self.reached_at: float | None = None  # monotonic time the counter reached target
        self.last_change = time.monotonic()
        self.reached = threading.Event()
        self.stderr_path = outdir / f"sink-{port}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL
        )
        self._thread = threading.Thread(target=self._reader, name=f"sink-{port}", daemon=True)
        self._thread.start()

    def _reader(self) -> None:
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        tail = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            now = time.monotonic()
            data = tail + chunk
            cut = max(data.rfind(b"\r"), data.rfind(b"\n"))
            if cut < 0:
                tail = data
                continue
            complete, tail = data[:cut], data[cut + 1 :]
            found = self.COUNTER.findall(complete)
            if found:
                n = max(int(x) for x in found)
                if n != self.count:
                    self.count = n
                    self.last_change = now
                if n >= self.target and self.reached_at is None:
                    self.reached_at = now
                    self.reached.set()

    def wait_listening(self, deadline: float = 10) -> None:
        wait_until(
            lambda: port_open(self.port),
            deadline,
            f"smtp-sink on 127.0.0.1:{self.port}",
            alive=lambda: (
                f"smtp-sink exited rc={self.proc.returncode}; see {self.stderr_path}"
                if self.proc.poll() is not None
                else None
            ),
        )

    def cpu_jiffies(self) -> int | None:
        st = proc_stat(self.proc.pid)
        return st[1] if st else None

    def stop(self) -> None:
        stop_process(self.proc, "smtp-sink", term_timeout=5)
        self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self.proc.stdout.close()  # type: ignore[union-attr]
        self._stderr.close()


# --------------------------------------------------------------------------- MTAs under test


class PostfixInstance:
    """A throwaway Postfix: own config/queue/data dirs; relays everything to the sink."""

    name = "postfix"
    # Logged once per smtpd process start on a Debian install made with "No configuration"
    # (default alias_maps = hash:/etc/aliases, nis:mail.aliases; no aliases.db, no NIS).
    # Harmless here (no local delivery); we keep Postfix's defaults, so they are expected.
    BENIGN = (
        "open database /etc/aliases.db: No such file or directory",
        "dict_nis_init: NIS domain name not set",
    )

    def __init__(self, workdir: Path, sink_port: int, outdir: Path, tag: str, log_enabled: bool):
        self.dir = workdir / "postfix"
        self.conf = self.dir / "conf"
        self.queue = self.dir / "queue"
        self.data = self.dir / "data"
        self.maillog = self.dir / "maillog"
        self.port = free_port()
        self.sink_port = sink_port
        self.outdir = outdir
        self.tag = tag
        self.log_enabled = log_enabled
        self.master_pid: int | None = None
        self.started = False
        self.settings = [
            f"queue_directory={self.queue}",
            f"data_directory={self.data}",
            "compatibility_level=3.6",
            "mydestination=",
            f"relayhost=[127.0.0.1]:{sink_port}",
            "mynetworks=127.0.0.0/8",
            "smtp_destination_concurrency_limit=50",
            "default_process_limit=200",
            "inet_interfaces=127.0.0.1",
        ]
        if log_enabled:
            self.settings += [f"maillog_file={self.maillog}", f"maillog_file_prefixes={self.dir}"]

    def setup_commands(self) -> list[str]:
        return [
            f"mkdir -p {self.conf} {self.queue} {self.data}; chown postfix {self.data}; "
            f"cp /etc/postfix/master.cf {self.conf}/; : > {self.conf}/main.cf",
            f"postconf -c {self.conf} -e " + " ".join(self.settings),
            f"postconf -c {self.conf} -F -e '*/*/chroot = n'",
            f"sed -i 's/^smtp\\(\\s\\+inet\\)/127.0.0.1:{self.port}\\1/' {self.conf}/master.cf",
            f"postfix -c {self.conf} start   # ... and 'postfix -c {self.conf} stop' after the trial",
        ]

    def start(self) -> None:
        for d in (self.conf, self.queue, self.data):
            d.mkdir(parents=True)
        shutil.chown(self.data, user="postfix")
        src = Path("/etc/postfix/master.cf")
        if not src.exists():
            src = Path("/usr/share/postfix/master.cf.dist")
        shutil.copyfile(src, self.conf / "master.cf")
        (self.conf / "main.cf").write_text("")
        run(["postconf", "-c", str(self.conf), "-e", *self.settings])
        run(["postconf", "-c", str(self.conf), "-F", "-e", "*/*/chroot = n"])
        master_cf = self.conf / "master.cf"
        text, n = re.subn(
            r"(?m)^smtp(\s+inet\s)", rf"127.0.0.1:{self.port}\1", master_cf.read_text(), count=1
        )
        if n != 1:
            raise BenchError(f"no 'smtp inet' line in {master_cf}")
        master_cf.write_text(text)
        # Any other inet service would bind elsewhere: refuse to start if one exists.
        for line in text.splitlines():
            cols = line.split()
            if (
                len(cols) >= 2
                and not line[0].isspace()
                and not line.startswith("#")
                and cols[1] == "inet"
                and not cols[0].startswith("127.0.0.1:")
            ):
                raise BenchError(f"unexpected inet service in {master_cf}: {line}")
        run(["postfix", "-c", str(self.conf), "check"], timeout=60)
        self.started = True  # from here on, stop() must run
        cp = run(["postfix", "-c", str(self.conf), "start"], timeout=60, check=False)
        if cp.returncode != 0:
            raise BenchError(
                f"postfix start failed rc={cp.returncode}: {cp.stderr.strip()} "
                f"{cp.stdout.strip()}\nmaillog tail:\n{self._maillog_tail()}"
            )
        pidfile = self.queue / "pid" / "master.pid"
        wait_until(
            lambda: pidfile.exists() and pidfile.read_text().strip().isdigit(),
            30,
            f"Postfix master pid file {pidfile}",
        )
        self.master_pid = int(pidfile.read_text().strip())
        wait_until(
            lambda: smtp_banner_ok(self.port),
            30,
            f"Postfix smtpd banner on 127.0.0.1:{self.port}",
            alive=lambda: (
                None
                if proc_stat(self.master_pid)
                # type: ignore[arg-type]
                else f"postfix master exited; maillog tail:\n{self._maillog_tail()}"
            ),
        )

    def _maillog_tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.maillog.read_text(errors="replace").splitlines()[-n:])
        return "(no maillog)"

    def cpu_jiffies(self) -> tuple[int, int]:
        assert self.master_pid is not None
        return tree_cpu_jiffies(self.master_pid)

    def extra_stats(self) -> dict[str, Any]:
        assert self.master_pid is not None
        return {"instance_rss_kb_at_end": tree_rss_kb(self.master_pid)}

    def queue_empty(self) -> bool:
        cp = run(["postqueue", "-c", str(self.conf), "-p"], check=False, timeout=30)
        return "Mail queue is empty" in cp.stdout

    def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        cp = run(["postfix", "-c", str(self.conf), "stop"], check=False, timeout=60)
        if cp.returncode != 0:
            log(f"warning: postfix stop rc={cp.returncode}: {cp.stderr.strip()}; trying abort")
            run(["postfix", "-c", str(self.conf), "abort"], check=False, timeout=30)
        if self.master_pid:
            try:
                wait_until(
                    lambda: (
                        proc_stat(self.master_pid) is None  # type: ignore[arg-type]
                        or _is_zombie(self.master_pid)
                    ),
                    30,
                    "postfix master to exit",
                )
            except BenchError:
                log(f"warning: postfix master {self.master_pid} still running; SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.master_pid, signal.SIGKILL)

    def post_stats(self) -> dict[str, Any]:
        """After stop: delivery statuses and problem lines from the instance's maillog."""
        if not self.log_enabled:
            return {}
        counts = {"sent": 0, "deferred": 0, "bounced": 0, "other_status": 0}
        problems: list[str] = []
        benign = 0
        with contextlib.suppress(OSError), open(self.maillog, errors="replace") as fh:
            for line in fh:
                m = re.search(r" status=(\w+)", line)
                if m:
                    key = m.group(1) if m.group(1) in counts else "other_status"
                    counts[key] += 1
                if re.search(r"\b(warning|error|fatal|panic):", line):
                    if any(b in line for b in self.BENIGN):
                        benign += 1
                    else:
                        problems.append(line.rstrip())
        path = self.outdir / f"{self.tag}.maillog-problems.txt"
        path.write_text("\n".join(problems) + ("\n" if problems else ""))
        return {
            "maillog_status": counts,
            "maillog_problem_lines": len(problems),
            "maillog_benign_lines": benign,
            "maillog_problems_file": path.name,
        }


def _is_zombie(pid: int) -> bool:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as fh:
        data = fh.read()
        return data[data.rindex(")") + 2] == "Z"
    return True


class NimbusInstance:
    """``nimbus mta`` in sink mode with fresh spool/log directories."""

    name = "nimbus"

    def __init__(
        self,
        workdir: Path,
        sink_port: int,
        outdir: Path,
        tag: str,
        log_enabled: bool,
        dkim: bool = False,
    ):
        self.dir = workdir / "nimbus"
        self.dkim = dkim
        self.name = "nimbus-dkim" if dkim else "nimbus"
        self.port = free_port()
        self.http_port = free_port()
        self.sink_port = sink_port
        self.stderr_path = outdir / f"{tag}.nimbus-stderr.log"
        self.env_settings = {
            "NIMBUS_SMTP_LISTEN": f"127.0.0.1:{self.port}",
            "NIMBUS_HTTP_LISTEN": f"127.0.0.1:{self.http_port}",
            "NIMBUS_SPOOL_DIR": str(self.dir / "spool"),
            "NIMBUS_LOG_DIR": str(self.dir / "logs"),
            "NIMBUS_SINK_ENABLED": "true",
            "NIMBUS_SINK_ENDPOINT": f"127.0.0.1:{sink_port}",
        }
        # Both variants get a policy dir of their own (see write_bench_policy / _dkim_).
        self.env_settings["NIMBUS_POLICY_DIR"] = str(self.dir / "policy")
        exe = Path(sys.executable).parent / "nimbus"
        self.exe = str(exe) if exe.exists() else (shutil.which("nimbus") or "nimbus")
        self.proc: subprocess.Popen | None = None
        self._stderr = None

    def setup_commands(self) -> list[str]:
        return [" ".join(f"{k}={v}" for k, v in self.env_settings.items()) + " nimbus mta"]

    def write_bench_policy(self) -> None:
        """The bundled policy, minus the default shaping block's rate limits.

        policy/shaping.toml's ["default"] caps every destination at max_message_rate 100/s
        and max_connection_rate 100/min (KumoMTA's default file does the same). Those are a
        sender-reputation choice, not relay capacity, and Postfix has none here; so this
        benchmark removes exactly those two lines and keeps everything else the bundled
        policy does (queues.toml tenants, sources, shaping resolution, bounce rules)."""
        policy = self.dir / "policy"
        shutil.copytree(REPO / "policy", policy, ignore=shutil.ignore_patterns("__pycache__"))
        shaping = policy / "shaping.toml"
        lines = shaping.read_text().splitlines(keepends=True)
        kept = [
            ln
            for ln in lines
            if not ln.startswith(('max_message_rate = "100/s"', 'max_connection_rate = "100/min"'))
        ]
        if len(lines) - len(kept) != 2:
            raise RuntimeError(
                "policy/shaping.toml's default rate lines changed; update write_bench_policy"
            )
        shaping.write_text("".join(kept))

    def write_dkim_policy(self) -> None:
        """The same policy as the plain nimbus trials (write_bench_policy), plus a
        dkim_data.toml naming a fresh 2048-bit RSA key (PKCS#1, as KumoMTA docs): the
        bundled init.py signs whenever dkim_data.toml configures a key, so signing is the
        only difference between nimbus and nimbus-dkim."""
        self.write_bench_policy()
        policy = self.dir / "policy"
        key_dir = policy / "keys" / DKIM_DOMAIN
        key_dir.mkdir(parents=True)
        (policy / "dkim_data.toml").write_text(DKIM_DATA)
        run(
            [
                "openssl",
                "genrsa",
                "-traditional",
                "-out",
                str(key_dir / f"{DKIM_SELECTOR}.key"),
                "2048",
            ],
            timeout=60,
        )

    def start(self) -> None:
        self.dir.mkdir(parents=True)
        if self.dkim:
            self.write_dkim_policy()
        else:
            self.write_bench_policy()
        env = {k: v for k, v in os.environ.items() if not k.startswith("NIMBUS_")}
        env.update(self.env_settings)
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [self.exe, "mta"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            cwd=self.dir,
        )

        def ready() -> bool:
            with contextlib.suppress(OSError):
                for line in self.stderr_path.read_text(errors="replace").splitlines():
                    if '"event":"ready"' in line.replace(" ", ""):
                        port = json.loads(line).get("smtp_port")
                        if port != self.port:
                            raise BenchError(
                                f"nimbus ready on smtp_port {port}, expected {self.port}"
                            )
                        return True
            return False

        def alive() -> str | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return f"nimbus exited rc={self.proc.returncode}; stderr in {self.stderr_path}"
            return None

        wait_until(ready, 60, "nimbus 'ready' log line", interval=0.1, alive=alive)
        wait_until(
            lambda: self._http_status("/api/check-liveness/v1") == 200,
            30,
            "nimbus liveness 200",
            interval=0.1,
            alive=alive,
        )
        wait_until(
            lambda: smtp_banner_ok(self.port), 30, f"nimbus banner on {self.port}", alive=alive
        )
        # Be sure we measure the python process itself, not a wrapper.
        with open(f"/proc/{self.proc.pid}/cmdline", "rb") as fh:
            cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
        if "python" not in cmdline and "nimbus" not in cmdline:
            raise BenchError(f"pid {self.proc.pid} is not nimbus: {cmdline}")

    def _http_status(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def metrics(self) -> dict[str, float]:
        """Sum of each nimbus_* sample family (labels dropped)."""
        out: dict[str, float] = {}
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}/metrics", timeout=10
            ) as r:
                text = r.read().decode()
        except OSError as exc:
            return {"error": str(exc)}  # type: ignore[dict-item]
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            m = re.match(r"([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
            if m and not m.group(1).endswith("_created") and "_bucket" not in m.group(1):
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
        return out

    def cpu_jiffies(self) -> tuple[int, int]:
        """nimbus and its children (the DKIM signing worker, when one runs)."""
        assert self.proc is not None
        return tree_cpu_jiffies(self.proc.pid)

    def extra_stats(self) -> dict[str, Any]:
        assert self.proc is not None
        return {
            "peak_rss_kb": proc_status_kb(self.proc.pid, "VmHWM"),
            "rss_kb_at_end": proc_status_kb(self.proc.pid, "VmRSS"),
            "threads": proc_status_kb(self.proc.pid, "Threads"),
            "metrics_at_end": self.metrics(),
        }

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, "nimbus", term_timeout=40)  # shutdown_deadline is 25s
            self.post_rc = self.proc.returncode
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def post_stats(self) -> dict[str, Any]:
        """After stop: record types in the NDJSON log and warnings/errors on stderr."""
        types: dict[str, int] = {}
        bad_lines = 0
        logdir = self.dir / "logs"
        if logdir.exists():
            for f in sorted(logdir.iterdir()):
                if not f.is_file():
                    continue
                with open(f, errors="replace") as fh:
                    for line in fh:
                        try:
                            t = json.loads(line).get("type", "?")
                        except ValueError:
                            bad_lines += 1
                            continue
                        types[t] = types.get(t, 0) + 1
        levels: dict[str, int] = {}
        problems: list[str] = []
        with contextlib.suppress(OSError), open(self.stderr_path, errors="replace") as fh:
            for line in fh:
                try:
                    level = str(json.loads(line).get("level", "?"))
                except ValueError:
                    level = "non-json"
                levels[level] = levels.get(level, 0) + 1
                if level not in ("info", "debug"):
                    problems.append(line.rstrip())
        if self.dkim and not any(
            "dkim_workers_started" in line for line in _lines(self.stderr_path)
        ):
            problems.append("no 'dkim worker started' line: were messages signed?")
        return {
            "log_record_types": types,
            "log_bad_lines": bad_lines,
            "stderr_levels": levels,
            "stderr_problem_lines": problems[:50],
            "exit_code": getattr(self, "post_rc", None),
            "stderr_file": self.stderr_path.name,
        }


def _lines(path: Path) -> list[str]:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace").splitlines()
    return []


# --------------------------------------------------------------------------- one trial


def run_trial(
    mta_name: str, size: int, args: argparse.Namespace, outdir: Path, run_no: int
) -> dict[str, Any]:
    n = args.messages
    tag = f"r{run_no}-{size}-{mta_name}"
    result: dict[str, Any] = {
        "mta": mta_name,
        "size": size,
        "run": run_no,
        "messages": n,
        "sessions": args.sessions,
        "ok": False,
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    workdir = Path(tempfile.mkdtemp(prefix=f"nimbus-bench-{tag}-", dir=args.workdir))
    os.chmod(workdir, 0o755)  # Postfix daemons (user postfix) must traverse into the queue dir
    sink_port = free_port()
    sink: Sink | None = None
    mta: PostfixInstance | NimbusInstance | None = None
    source: subprocess.Popen | None = None
    try:
        sink = Sink(sink_port, n, outdir)
        sink.wait_listening()
        if mta_name == "postfix":
            mta = PostfixInstance(
                workdir, sink_port, outdir, tag, log_enabled=not args.postfix_no_log
            )
        else:
            mta = NimbusInstance(
                workdir, sink_port, outdir, tag, log_enabled=False, dkim=mta_name == "nimbus-dkim"
            )
        mta.start()
        result["mta_port"] = mta.port
        result["sink_port"] = sink_port
        if sink.count:
            raise BenchError(f"sink already counted {sink.count} messages before the load started")

        cmd = [
            "smtp-source",
            "-s",
            str(args.sessions),
            "-m",
            str(n),
            "-l",
            str(size),
            "-f",
            SENDER,
            "-t",
            RECIPIENT,
            *(["-d"] if args.reuse_sessions else []),
            f"127.0.0.1:{mta.port}",
        ]
        result["source_cmd"] = " ".join(cmd)
        os.sync()  # start every trial with no dirty pages left over from the previous one
        b0, w0 = box_busy_jiffies(), time.monotonic()
        time.sleep(args.settle)
        # other load on the box just before the trial (the machine is shared), in % of all CPUs
        result["background_box_cpu_pct"] = round(
            (box_busy_jiffies() - b0)
            / CLK_TCK
            / (time.monotonic() - w0)
            / (os.cpu_count() or 1)
            * 100,
            1,
        )
        src_out = open(outdir / f"{tag}.smtp-source.out", "wb")
        cpu_box0 = box_busy_jiffies()
        cpu_mta0, nprocs0 = mta.cpu_jiffies()
        sink_cpu0 = sink.cpu_jiffies() or 0
        ru0 = os.times()
        t0 = time.monotonic()
        source = subprocess.Popen(
            cmd, stdout=src_out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = t0 + args.trial_timeout
        t_ingress = None
        while True:
            if t_ingress is None and source.poll() is not None:
                t_ingress = time.monotonic()
                ru1 = os.times()
                if source.returncode != 0:
                    log(
                        f"warning: smtp-source exited rc={source.returncode} (see {tag}.smtp-source.out)"
                    )
            if sink.reached.wait(timeout=0.2):
                break
            now = time.monotonic()
            if now > deadline:
                raise BenchError(
                    f"trial timeout ({args.trial_timeout}s): sink has {sink.count}/{n}, "
                    f"smtp-source {'finished' if t_ingress else 'still running'}"
                )
            if (
                t_ingress is not None
                and now - max(sink.last_change, t_ingress) > args.stall_timeout
            ):
                raise BenchError(
                    f"stalled: sink count stuck at {sink.count}/{n} for "
                    f"{args.stall_timeout}s after smtp-source exited"
                )
            if mta_name in NIMBUS_MTAS and mta.proc.poll() is not None:  # type: ignore[union-attr]
                raise BenchError(f"nimbus exited rc={mta.proc.returncode} during the trial")  # type: ignore[union-attr]
        t_done = sink.reached_at or time.monotonic()
        cpu_box1 = box_busy_jiffies()
        cpu_mta1, nprocs1 = mta.cpu_jiffies()
        sink_cpu1 = sink.cpu_jiffies() or sink_cpu0
        result["extra"] = mta.extra_stats()
        if t_ingress is None:  # the sink can count the last message before smtp-source exits
            try:
                source.wait(timeout=60)
            except subprocess.TimeoutExpired:
                raise BenchError(
                    "sink has all messages but smtp-source has not exited after 60s"
                ) from None
            t_ingress = time.monotonic()
            ru1 = os.times()
            if source.returncode != 0:
                log(f"warning: smtp-source exited rc={source.returncode}")
        src_out.close()
        src_text = (outdir / f"{tag}.smtp-source.out").read_text(errors="replace")
        if not src_text.strip():
            (outdir / f"{tag}.smtp-source.out").unlink()
        e2e = t_done - t0
        ms = 1000.0 / CLK_TCK
        result.update(
            {
                "source_rc": source.returncode,
                "source_output": src_text.strip()[-2000:],
                "e2e_seconds": round(e2e, 4),
                "ingress_seconds": round(t_ingress - t0, 4),
                "e2e_msgs_per_s": round(n / e2e, 1),
                "ingress_msgs_per_s": round(n / (t_ingress - t0), 1),
                "mta_cpu_ms_per_msg": round((cpu_mta1 - cpu_mta0) * ms / n, 3),
                "box_cpu_ms_per_msg": round((cpu_box1 - cpu_box0) * ms / n, 3),
                "box_cpu_util_pct": round(
                    (cpu_box1 - cpu_box0) * ms / 1000 / e2e / (os.cpu_count() or 1) * 100, 1
                ),
                "sink_cpu_ms_per_msg": round((sink_cpu1 - sink_cpu0) * ms / n, 3),
                "source_cpu_ms_per_msg": round(
                    (
                        (ru1.children_user + ru1.children_system)
                        - (ru0.children_user + ru0.children_system)
                    )
                    * 1000
                    / n,
                    3,
                ),
                "mta_processes_start_end": [nprocs0, nprocs1],
            }
        )
        if mta_name in NIMBUS_MTAS:
            result["peak_rss_kb"] = result["extra"]["peak_rss_kb"]
        if mta_name == "postfix":
            wait_until(mta.queue_empty, 30, "postfix queue to be empty", interval=0.5)  # type: ignore[union-attr]
        time.sleep(0.5)  # let late duplicates, if any, reach the sink before the final count
        result["ok"] = source.returncode == 0
        if source.returncode != 0:
            result["error"] = f"smtp-source rc={source.returncode}"
    except BenchError as exc:
        result["error"] = str(exc)
        log(f"ERROR in {tag}: {exc}")
        if isinstance(mta, NimbusInstance) and mta.proc and mta.proc.poll() is None:
            result["metrics_at_error"] = mta.metrics()
    finally:
        if source is not None and source.poll() is None:
            stop_process(source, "smtp-source", term_timeout=5)
        if mta is not None:
            try:
                mta.stop()
                result["post"] = mta.post_stats()
            except Exception as exc:  # noqa: BLE001 - cleanup must go on
                log(f"warning: stopping {mta_name} failed: {exc!r}")
                result.setdefault("cleanup_errors", []).append(repr(exc))
        if sink is not None:
            result["sink_final_count"] = sink.count
            sink.stop()
            if sink.stderr_path.exists() and not sink.stderr_path.read_bytes().strip():
                sink.stderr_path.unlink()
        if args.keep_workdir:
            result["workdir"] = str(workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if result.get("ok") and result.get("sink_final_count", n) != n:
        result["warning"] = f"sink counted {result['sink_final_count']} messages for {n} sent"
    if mta_name in NIMBUS_MTAS and result.get("post"):
        delivered = result["post"]["log_record_types"].get("Delivery", 0)
        if delivered != n:
            result.setdefault("warnings", []).append(
                f"{delivered} Delivery records for {n} messages"
            )
    return result


# --------------------------------------------------------------------------- reporting


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def summarize(trials: list[dict[str, Any]], sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        per: dict[str, dict[str, Any]] = {}
        for mta in ("postfix", *NIMBUS_MTAS):
            ok = [t for t in trials if t["mta"] == mta and t["size"] == size and t.get("ok")]
            allt = [t for t in trials if t["mta"] == mta and t["size"] == size]
            if not allt:
                continue
            e2e = [t["e2e_msgs_per_s"] for t in ok]
            row = {
                "size": size,
                "mta": mta,
                "trials_ok": len(ok),
                "trials": len(allt),
                "e2e": median(e2e),
                "e2e_min": min(e2e) if e2e else None,
                "e2e_max": max(e2e) if e2e else None,
                "ingress": median([t["ingress_msgs_per_s"] for t in ok]),
                "mta_cpu": median([t["mta_cpu_ms_per_msg"] for t in ok]),
                "box_cpu": median([t["box_cpu_ms_per_msg"] for t in ok]),
                "background": median([t["background_box_cpu_pct"] for t in ok]),
                "peak_rss_mb": (
                    max(t["peak_rss_kb"] for t in ok) / 1024 if mta in NIMBUS_MTAS and ok else None
                ),
            }
            per[mta] = row
            rows.append(row)
        for mta in NIMBUS_MTAS:
            add_ratio(per, trials, size, mta, "postfix", "ratio")
        add_ratio(per, trials, size, "nimbus-dkim", "nimbus", "dkim_ratio")
    return rows


def add_ratio(
    per: dict[str, dict[str, Any]],
    trials: list[dict[str, Any]],
    size: int,
    mta: str,
    base: str,
    key: str,
) -> None:
    """per[mta][key] = median e2e of mta / of base; per[mta][key + '_paired']: per run."""
    if not (mta in per and base in per and per[mta]["e2e"] and per[base]["e2e"]):
        return
    per[mta][key] = per[mta]["e2e"] / per[base]["e2e"]
    paired = []
    for r in sorted({t["run"] for t in trials}):
        a = [
            t
            for t in trials
            if t["run"] == r and t["size"] == size and t["mta"] == mta and t.get("ok")
        ]
        b = [
            t
            for t in trials
            if t["run"] == r and t["size"] == size and t["mta"] == base and t.get("ok")
        ]
        if a and b:
            paired.append(a[0]["e2e_msgs_per_s"] / b[0]["e2e_msgs_per_s"])
    per[mta][key + "_paired"] = paired


def fmt(x: float | None, spec: str = ".0f") -> str:
    return "—" if x is None else format(x, spec)


def table_md(rows: list[dict[str, Any]]) -> str:
    out = [
        "| size (B) | MTA | msgs/s e2e, median (min–max) | ingress msgs/s | MTA CPU ms/msg "
        "| whole-box CPU ms/msg | background CPU % before | nimbus/postfix e2e | nimbus peak RSS | trials ok |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = ""
        if r["mta"] in NIMBUS_MTAS and r.get("ratio") is not None:
            pr = ", ".join(f"{p:.2f}" for p in r.get("ratio_paired", []))
            ratio = f"**{r['ratio']:.2f}×** (per run: {pr})"
        rss = f"{r['peak_rss_mb']:.0f} MiB" if r.get("peak_rss_mb") else ""
        e2e = f"**{fmt(r['e2e'])}** ({fmt(r['e2e_min'])}–{fmt(r['e2e_max'])})" if r["e2e"] else "—"
        out.append(
            f"| {r['size']} | {r['mta']} | {e2e} | {fmt(r['ingress'])} | {fmt(r['mta_cpu'], '.2f')} "
            f"| {fmt(r['box_cpu'], '.2f')} | {fmt(r['background'], '.0f')} | {ratio} | {rss} | {r['trials_ok']}/{r['trials']} |"
        )
    return "\n".join(out)


def table_text(rows: list[dict[str, Any]]) -> str:
    hdr = f"{'size':>6} {'MTA':11} {'e2e/s':>8} {'(min-max)':>13} {'ingress/s':>9} {'MTAcpu':>7} {'boxcpu':>7} {'ratio':>6} {'RSS MiB':>7} {'bg%':>4} ok"
    out = [hdr, "-" * len(hdr)]
    for r in rows:
        rng = f"{fmt(r['e2e_min'])}-{fmt(r['e2e_max'])}" if r["e2e"] else ""
        out.append(
            f"{r['size']:>6} {r['mta']:11} {fmt(r['e2e']):>8} {rng:>13} {fmt(r['ingress']):>9} "
            f"{fmt(r['mta_cpu'], '.2f'):>7} {fmt(r['box_cpu'], '.2f'):>7} "
            f"{fmt(r.get('ratio'), '.2f'):>6} {fmt(r.get('peak_rss_mb'), '.0f'):>7} {fmt(r.get('background')):>4} "
            f"{r['trials_ok']}/{r['trials']}"
            + (f"   DKIM on/off {r['dkim_ratio']:.2f}" if r.get("dkim_ratio") else "")
        )
    return "\n".join(out)


def write_markdown(
    path: Path,
    rows: list[dict[str, Any]],
    info: dict[str, Any],
    args: argparse.Namespace,
    cmds: dict[str, list[str]],
    results_rel: str,
    problems: list[str],
    started: str,
) -> None:
    section = f"""{MD_BEGIN}
## Relay throughput: nimbus vs Postfix (bench/run_bench.py)

Run {started} on `{info["hostname"]}`: {info["nproc"]} CPUs ({info["cpu_model"]}), {info["mem_gib"]} GiB,
kernel {info["kernel"]}, Python {info["python"]}, Postfix {info["postfix"]}, nimbus {info["nimbus"]}
(git `{info["git"]}`). Load generator, MTA and sink share the same cores; the machine is shared
and noisy, so **only the ratios inside one run mean anything**.

Method: {args.messages} messages per trial, {args.sessions} parallel sessions,
{"one session per message" if not args.reuse_sessions else "sessions reused (-d)"}; {args.runs} run(s), Postfix and nimbus
trials interleaved (order alternating per run), medians shown. Every trial starts a fresh sink and a
fresh MTA instance (startup not timed). **e2e** = N / (time from starting smtp-source until the
sink's own `-c` counter reached N); **ingress** = N / (time until smtp-source exited).
**MTA CPU** = utime+stime of the MTA's processes over the same window (nimbus: its process;
Postfix: master + live children + reaped children); **whole-box CPU** = non-idle jiffies from
`/proc/stat` (includes smtp-source, smtp-sink and whatever else runs on the shared box;
"background" is the box's busy share in the {args.settle:g} s idle gap just before each trial).
Postfix logs to a file (`maillog_file`), as a real install logs to syslog; nimbus writes its
NDJSON log records. Ratio = median nimbus e2e /
median Postfix e2e (per-run paired ratios in brackets).

Commands (per trial; ports are picked free on 127.0.0.1):

```
{chr(10).join(cmds["sink"])}
{chr(10).join(cmds["source"])}
# Postfix: a throwaway instance ($TMP = a fresh directory under --workdir, mode 0755)
{chr(10).join(cmds["postfix"])}
# nimbus
{chr(10).join(cmds["nimbus"])}
```

{table_md(rows)}

Raw per-trial JSON, nimbus stderr logs and Postfix warning lines: `{results_rel}/` (not committed).
{("Problems seen:" + chr(10) + chr(10).join("- " + p for p in problems)) if problems else "No trial errors; no warnings or errors in nimbus stderr."}
{MD_END}
"""
    replace_section(path, MD_BEGIN, MD_END, section)


def replace_section(path: Path, begin: str, end: str, section: str) -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) into ``path``,
    replacing the previous one between the same markers, else appending it."""
    if path.exists():
        text = path.read_text()
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            tail = rest.split(end, 1)[1]
            text = head + section.rstrip("\n") + tail
        else:
            text = text.rstrip("\n") + "\n\n" + section
    else:
        text = (
            "# Nimbus benchmarks\n\nGenerated sections are rewritten by the script named in "
            "their heading; edit outside the markers.\n\n" + section
        )
    path.write_text(text)


def table_dkim_md(rows: list[dict[str, Any]]) -> str:
    """DKIM off vs on, one line per size."""
    out = [
        "| size (B) | nimbus e2e msgs/s (DKIM off) | nimbus-dkim e2e msgs/s (DKIM on) "
        "| on/off e2e | MTA CPU ms/msg off | on (incl. signing worker) | whole-box CPU ms/msg off | on |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sorted({r["size"] for r in rows}):
        off = next((r for r in rows if r["size"] == size and r["mta"] == "nimbus"), None)
        on = next((r for r in rows if r["size"] == size and r["mta"] == "nimbus-dkim"), None)
        if off is None or on is None:
            continue
        ratio = "—"
        if on.get("dkim_ratio") is not None:
            pr = ", ".join(f"{p:.2f}" for p in on.get("dkim_ratio_paired", []))
            ratio = f"**{on['dkim_ratio']:.2f}×** (per run: {pr})"
        out.append(
            f"| {size} | **{fmt(off['e2e'])}** ({fmt(off['e2e_min'])}–{fmt(off['e2e_max'])}) "
            f"| **{fmt(on['e2e'])}** ({fmt(on['e2e_min'])}–{fmt(on['e2e_max'])}) | {ratio} "
            f"| {fmt(off['mta_cpu'], '.2f')} | {fmt(on['mta_cpu'], '.2f')} "
            f"| {fmt(off['box_cpu'], '.2f')} | {fmt(on['box_cpu'], '.2f')} |"
        )
    return "\n".join(out)


def write_dkim_markdown(
    path: Path,
    rows: list[dict[str, Any]],
    info: dict[str, Any],
    args: argparse.Namespace,
    cmds: dict[str, list[str]],
    results_rel: str,
    problems: list[str],
    started: str,
) -> None:
    section = f"""{MD_DKIM_BEGIN}
## DKIM signing cost: nimbus with DKIM off vs on (bench/run_bench.py --dkim)

Run {started} on `{info["hostname"]}`: {info["nproc"]} CPUs ({info["cpu_model"]}), {info["mem_gib"]} GiB,
kernel {info["kernel"]}, Python {info["python"]}, Postfix {info["postfix"]}, nimbus {info["nimbus"]}
(git `{info["git"]}`). Same method as the relay section: {args.messages} messages of
{", ".join(str(s) for s in args.size_list)} B per trial, {args.sessions} parallel sessions, {args.runs} run(s),
MTAs {", ".join(args.mta_list)} interleaved (order alternating per run), medians shown; the
machine is shared and noisy, so compare within this run only. **nimbus-dkim** is the same
`nimbus mta` with the same policy as nimbus (the bundled one minus the default shaping rate
limits) plus a `dkim_data.toml` naming a key, so the bundled policy signs every message
(rsa-sha256, 2048-bit key from `openssl genrsa -traditional`, relaxed/relaxed, dkimpy's
default header list) and signing is the only difference;
its MTA CPU includes the signing worker process (a child of nimbus). On/off = median
nimbus-dkim e2e / median nimbus e2e (per-run paired ratios in brackets).

```
# policy/dkim_data.toml (added to the benchmark's copy of the bundled policy)
{DKIM_DATA.rstrip()}
# nimbus-dkim
{chr(10).join(cmds["nimbus-dkim"])}
```

{table_dkim_md(rows)}

All MTAs of the run:

{table_md(rows)}

Raw per-trial JSON and nimbus stderr logs: `{results_rel}/` (not committed).
{("Problems seen:" + chr(10) + chr(10).join("- " + p for p in problems)) if problems else "No trial errors; no warnings or errors in nimbus stderr."}
{MD_DKIM_END}
"""
    replace_section(path, MD_DKIM_BEGIN, MD_DKIM_END, section)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--messages", type=int, default=10000, help="messages per trial (default 10000)")
    p.add_argument(
        "--sizes", default="4096,40960", help="comma-separated payload sizes for smtp-source -l"
    )
    p.add_argument("--sessions", type=int, default=20, help="smtp-source -s (default 20)")
    p.add_argument(
        "--runs", type=int, default=3, help="interleaved runs per size and MTA (default 3)"
    )
    p.add_argument(
        "--mtas",
        default="postfix,nimbus",
        help="which MTAs: postfix, nimbus, nimbus-dkim (default postfix,nimbus)",
    )
    p.add_argument(
        "--dkim",
        action="store_true",
        help="also run nimbus-dkim (signs every message) and write the DKIM section",
    )
    p.add_argument("--reuse-sessions", action="store_true", help="smtp-source -d (reuse sessions)")
    p.add_argument(
        "--postfix-no-log",
        action="store_true",
        help="no maillog_file for Postfix (default: log to a file, like a real install)",
    )
    p.add_argument(
        "--trial-timeout", type=float, default=0, help="seconds per trial (default 120 + N/20)"
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=60,
        help="fail a trial if the sink count stops moving this long after ingress ended",
    )
    p.add_argument(
        "--settle", type=float, default=2.0, help="idle seconds before each trial's load"
    )
    p.add_argument(
        "--workdir", default="/var/tmp", help="parent of per-trial temp dirs (a real disk)"
    )
    p.add_argument(
        "--keep-workdir", action="store_true", help="keep spool/queue dirs for inspection"
    )
    p.add_argument("--results-dir", default=str(REPO / "bench" / "results"))
    p.add_argument(
        "--markdown", default=str(REPO / "BENCHMARKS.md"), help="file to update ('' = none)"
    )
    args = p.parse_args(argv)
    args.size_list = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.mta_list = [m.strip() for m in args.mtas.split(",") if m.strip()]
    if args.dkim:
        args.mta_list += [m for m in NIMBUS_MTAS if m not in args.mta_list]
    if not set(args.mta_list) <= {"postfix", *NIMBUS_MTAS} or not args.mta_list:
        p.error("--mtas takes postfix, nimbus and/or nimbus-dkim")
    args.dkim = "nimbus-dkim" in args.mta_list
    if args.messages < 1 or args.runs < 1 or args.sessions < 1 or not args.size_list:
        p.error("--messages, --runs, --sessions must be positive and --sizes non-empty")
    if not args.trial_timeout:
        args.trial_timeout = 120 + args.messages / 20
    return args


def preflight(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        raise BenchError("run as root: Postfix needs root to start, smtp-sink drops to 'nobody'")
    import pwd

    for tool in ("smtp-sink", "smtp-source", "postfix", "postconf", "postqueue"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} not found (Debian package 'postfix')")
    for user in ("postfix", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise BenchError(
                f"no user {user!r}: is the Debian postfix package installed?"
            ) from None
    if not Path(args.workdir).is_dir():
        raise BenchError(f"--workdir {args.workdir} is not a directory")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    try:
        preflight(args)
    except BenchError as exc:
        print(f"run_bench: {exc}", file=sys.stderr)
        return 2
    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    outdir = Path(args.results_dir) / stamp
    outdir.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    etc_before = etc_postfix_fingerprint()
    log(
        f"results -> {outdir}; {args.messages} msgs x sizes {args.size_list} x {args.runs} runs; "
        f"{info['nproc']} CPUs {info['cpu_model']}"
    )
    trials: list[dict[str, Any]] = []
    interrupted = False
    try:
        for run_no in range(1, args.runs + 1):
            for size in args.size_list:
                order = args.mta_list if run_no % 2 else list(reversed(args.mta_list))
                for mta in order:
                    log(f"run {run_no}/{args.runs} size {size} {mta}: start")
                    t = run_trial(mta, size, args, outdir, run_no)
                    trials.append(t)
                    (outdir / "trials.json").write_text(json.dumps(trials, indent=1))
                    if t.get("ok"):
                        log(
                            f"run {run_no} size {size} {mta}: e2e {t['e2e_msgs_per_s']}/s "
                            f"ingress {t['ingress_msgs_per_s']}/s MTA cpu {t['mta_cpu_ms_per_msg']} ms/msg "
                            f"box cpu {t['box_cpu_ms_per_msg']} ms/msg"
                            + (
                                f" peak RSS {t['peak_rss_kb'] // 1024} MiB"
                                if mta in NIMBUS_MTAS
                                else ""
                            )
                        )
                    else:
                        log(f"run {run_no} size {size} {mta}: FAILED: {t.get('error')}")
    except KeyboardInterrupt as exc:
        interrupted = True
        log(f"interrupted ({exc}); cleaned up the running trial; reporting what finished")

    etc_after = etc_postfix_fingerprint()
    problems: list[str] = []
    for t in trials:
        tag = f"run {t['run']} {t['size']} B {t['mta']}"
        if not t.get("ok"):
            problems.append(f"{tag}: FAILED: {t.get('error')}")
        for w in ([t["warning"]] if t.get("warning") else []) + t.get("warnings", []):
            problems.append(f"{tag}: {w}")
        post = t.get("post", {})
        for line in post.get("stderr_problem_lines", [])[:3]:
            problems.append(f"{tag}: nimbus stderr: `{line[:300]}`")
        if post.get("maillog_problem_lines"):
            problems.append(
                f"{tag}: {post['maillog_problem_lines']} warning/error lines in Postfix maillog "
                f"({post['maillog_problems_file']})"
            )
        if t["mta"] in NIMBUS_MTAS and post.get("exit_code") not in (0, None):
            problems.append(f"{tag}: nimbus exit code {post['exit_code']} after SIGTERM")
    if etc_before != etc_after:
        problems.append("/etc/postfix changed during the run (it must not)")

    rows = summarize(trials, args.size_list)
    summary = {
        "started": started.isoformat(timespec="seconds"),
        "machine": info,
        "args": {k: v for k, v in vars(args).items()},
        "rows": rows,
        "problems": problems,
        "etc_postfix_unchanged": etc_before == etc_after,
        "interrupted": interrupted,
    }
    (outdir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print()
    print(table_text(rows))
    if problems:
        print("\nProblems:")
        for p in problems:
            print(" -", p)
    print(f"\nraw results: {outdir}")

    if args.markdown and trials and not interrupted:
        pf = PostfixInstance(Path("$TMP"), "SINKPORT", outdir, "x", not args.postfix_no_log)  # type: ignore[arg-type]
        pf.port = "PORT"  # type: ignore[assignment]
        nb = NimbusInstance(Path("$TMP"), "SINKPORT", outdir, "x", False)  # type: ignore[arg-type]
        nb.env_settings.update(
            {
                "NIMBUS_SMTP_LISTEN": "127.0.0.1:PORT",
                "NIMBUS_HTTP_LISTEN": "127.0.0.1:HTTPPORT",
                "NIMBUS_SINK_ENDPOINT": "127.0.0.1:SINKPORT",
            }
        )
        cmds = {
            "sink": ["smtp-sink -c -m 1024 -u nobody 127.0.0.1:SINKPORT 1024"],
            "source": [
                f"smtp-source -s {args.sessions} -m {args.messages} -l SIZE -f {SENDER} -t {RECIPIENT}"
                + (" -d" if args.reuse_sessions else "")
                + " 127.0.0.1:PORT"
            ],
            "postfix": pf.setup_commands(),
            "nimbus": nb.setup_commands(),
        }
        nd = NimbusInstance(Path("$TMP"), "SINKPORT", outdir, "x", False, dkim=True)  # type: ignore[arg-type]
        nd.env_settings.update(
            {k: v for k, v in nb.env_settings.items() if k != "NIMBUS_POLICY_DIR"}
        )
        cmds["nimbus-dkim"] = nd.setup_commands()
        md = Path(args.markdown)
        try:
            rel = str(outdir.relative_to(REPO))
        except ValueError:
            rel = str(outdir)
        when = started.strftime("%Y-%m-%d %H:%M UTC")
        if args.dkim:  # its own section: the relay section keeps its (bigger) run
            write_dkim_markdown(md, rows, info, args, cmds, rel, problems, when)
        else:
            write_markdown(md, rows, info, args, cmds, rel, problems, when)
        print(f"updated {md}")
    return 1 if interrupted or any(not t.get("ok") for t in trials) else 0


if __name__ == "__main__":
    sys.exit(main())
