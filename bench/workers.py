"""bench/workers: several ``tracker worker`` processes share the polling on one PostgreSQL database; then one is
killed with SIGKILL in the middle of its claims.

One command (``bench/workers`` or ``python bench/workers.py``). For each worker count in ``--workers`` it:

1. creates a fresh PostgreSQL database (``tracker db upgrade``) and starts a CryptoPocket simulator server
   (``python -m tracker.providers.simulators cryptopocket``: no rate limit, ``--latency`` per request) holding
   CUSTOMERS users in ``processing``;
2. inserts those CUSTOMERS as tracked cryptopocket customers already ``pending`` for an hour, so the policy's
   ceiling applies at once: each is due every INTERVAL (``TRACKER_POLL_INTERVAL``); their first due times are
   spread evenly over one interval;
3. starts N ``tracker worker`` processes (``TRACKER_TICK`` 200ms, ``TRACKER_POLL_LEASE``, no rate limit,
   ``TRACKER_CRYPTOPOCKET_CONCURRENCY`` 16: a worker claims at most twice its concurrency a tick, so 150 polls
   a second need more than the default 4) and waits until every customer has been polled and every worker is
   polling, plus one interval;
4. steady phase: for DURATION seconds it counts, from the simulator's request log (``GET /_sim/log``: arrival
   times, customer, client port), the status requests. Targets: the total within 1 % of CUSTOMERS x
   (DURATION / INTERVAL), and no double poll (two polls of one customer less than half an interval apart) in
   the whole run;
5. kill phase: a tenth of the customers (``--flip``) turn ``valid`` at the provider; the bench watches
   ``customers.poll_lease_owner`` for the first worker's owner id (``host:pid:hex``) and SIGKILLs it as soon as
   it holds claims (should it have finished them all in between, a new worker replaces it and the next one is
   killed, up to three times); half of the customers it held then turn ``valid`` too. Targets: every customer
   it held is polled by another worker, not before its lease expired (``poll_lease_until``) and within the
   lease time after it; no lease of the dead worker is left; every customer turned ``valid`` is ``verified``
   with exactly one ``provider_approved`` history row, no (customer, to_state, trigger) history row exists
   twice, and no other customer has a history row.

Polls are told apart by worker through the client port of each request, mapped to the worker process that
owned that socket (``/proc/<pid>/fd`` and ``/proc/net/tcp``, sampled during the run); a request of the killed
worker is one that arrived before it died, or up to a second later from one of its own ports.

The machine's CPU pressure over the steady window (Linux PSI) is printed with it: the workers, PostgreSQL and
the simulator need about 1.5 of 2 cores here, so a machine shared with other loads shows in the poll count.

It prints a report per worker count and PASS or FAIL; the exit status is 1 on FAIL.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import httpx
from sqlalchemy import Engine, text

from tracker.db.engine import make_engine
from tracker.db.tables import customers as customers_table
from tracker.durations import format_duration, parse_duration

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
API_KEY = "sim-cryptopocket-key"  # the simulator's defaults
API_SECRET = "sim-cryptopocket-secret"
CHECK_PATH = "/api/kyc/check"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def base_env() -> dict[str, str]:
    """The caller's environment without its TRACKER_ variables (the tracker refuses names it does not know)."""
    return {name: value for name, value in os.environ.items() if not name.startswith("TRACKER_")}


def sim_ids(count: int) -> list[str]:
    """The user ids ``--customers N`` creates in the CryptoPocket simulator."""
    return [f"usr_sim_{i:06d}" for i in range(1, count + 1)]


# -- processes -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Poll:
    """One status request as the simulator logged it."""

    at: float  # wall clock at arrival (unix seconds)
    mono: float  # time.monotonic() at arrival (system-wide on Linux: comparable with ours)
    customer: str
    status: int
    port: int | None  # the client's port


class Simulator:
    """A CryptoPocket simulator server in its own process."""

    def __init__(self, workdir: Path, *, customers: int, latency: float, rates: Iterable[str] = (),
                 status: str = "processing") -> None:
        self.port = free_port()
        self.log_path = workdir / "simulator.log"
        rate_args = [arg for rate in rates for arg in ("--rate", rate)] or ["--no-rate-limit"]
        self.command = [sys.executable, "-m", "tracker.providers.simulators", "cryptopocket", "--port", str(self.port),
                        "--latency", str(latency), "--customers", str(customers), "--status", status, *rate_args]
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=30)
        self.polls: list[Poll] = []
        self._next = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def start(self, timeout: float = 30) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, env=base_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                                            stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the simulator exited with {self.process.returncode}: {self.tail()}")
            with contextlib.suppress(httpx.TransportError):
                if self.http.get("/_sim/stats").status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"the simulator did not answer within {timeout:.0f} s: {self.tail()}")

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = self.http.get("/_sim/stats").json()
        return data

    def fetch(self) -> list[Poll]:
        """Every status request so far (read incrementally from ``/_sim/log``)."""
        data = self.http.get("/_sim/log", params={"after": self._next, "path": CHECK_PATH}).json()
        fields = {name: i for i, name in enumerate(data["fields"])}
        for row in data["requests"]:
            client = row[fields["client"]]
            port = int(client.rsplit(":", 1)[1]) if client else None
            self.polls.append(Poll(row[fields["at"]], row[fields["monotonic"]], row[fields["customer_id"]] or "",
                                   row[fields["status"]], port))
        self._next = data["next"]
        return self.polls

    def set_status(self, ids: Iterable[str], status: str) -> None:
        for user_id in ids:
            self.http.post("/_sim/records", json={"id": user_id, "status": status}).raise_for_status()

    def stop(self) -> None:
        self.http.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def tail(self, lines: int = 20) -> str:
        return tail(self.log_path, lines)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Worker:
    """``tracker worker`` in its own process; stderr goes to its log file."""

    def __init__(self, number: int, env: dict[str, str], workdir: Path) -> None:
        self.number = number
        self.env = env
        self.log_path = workdir / f"worker-{number}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "tracker.cli", "worker"], env=self.env, cwd=ROOT,
                                            stdout=subprocess.DEVNULL, stderr=log)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def owner_pattern(self) -> str:
        """Matches the owner ids this process writes: ``{hostname}:{pid}:{hex}``."""
        return f"%:{self.pid}:%"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown handler, no draining of the polls in flight."""
        if self.process is not None:
            if self.process.poll() is None:
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def cpu_seconds(self) -> float:
        """User + system CPU time so far (``/proc/<pid>/stat``)."""
        return cpu_seconds(self.pid)

    def tail(self, lines: int = 20) -> str:
        return tail(self.log_path, lines)


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": field 3 (state) is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


def cpu_stall() -> float | None:
    """Seconds so far during which some task waited for a CPU (Linux PSI, ``/proc/pressure/cpu``): how much
    the machine, shared with whatever else runs on it, held the processes under test back."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    fields = dict(part.split("=", 1) for part in line.split()[1:])
    return int(fields["total"]) / 1e6 if "total" in fields else None


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` has open (empty if it is gone)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def tcp_ports_by_inode() -> dict[str, int]:
    """Local TCP port of every socket on the machine, by inode (reading these tables walks the kernel's whole
    connection hash: milliseconds each, so once per sample)."""
    ports = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) > 9:
                    ports[parts[9]] = int(parts[1].rsplit(":", 1)[1], 16)
    return ports


class PortMap:
    """Which worker process owned which client port, sampled during the run."""

    def __init__(self) -> None:
        self.owner: dict[int, int] = {}
        self.sampled = 0.0  # time.monotonic() of the last sample

    def sample(self, workers: Iterable[Worker]) -> None:
        self.sampled = time.monotonic()
        inodes = {worker.pid: socket_inodes(worker.pid) for worker in workers if worker.alive()}
        by_inode = tcp_ports_by_inode()
        for pid, owned in inodes.items():
            for inode in owned:
                if inode in by_inode:
                    self.owner[by_inode[inode]] = pid

    def ports_of(self, pid: int) -> set[int]:
        return {port for port, owner in self.owner.items() if owner == pid}


# -- database --------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def postgres_database(keep: bool = False, out: TextIO = sys.stdout) -> Iterator[str]:
    """A new PostgreSQL database, migrated with ``tracker db upgrade``; dropped afterwards."""
    import psycopg

    name = f"tracker_workers_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        if keep:
            print(f"kept database {url}", file=out)
        else:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def upgrade(url: str) -> None:
    subprocess.run([sys.executable, "-m", "tracker.cli", "db", "upgrade"], env={**base_env(),
                   "TRACKER_DATABASE_URL": url, "TRACKER_LOG_LEVEL": "warning"}, cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)


def seed_pending(engine: Engine, ids: list[str], *, first_due: datetime, spread: timedelta,
                 pending_for: timedelta = timedelta(hours=1)) -> None:
    """Tracked cryptopocket customers already pending for ``pending_for``; first due times spread evenly over
    ``spread`` from ``first_due`` (all at ``first_due`` when ``spread`` is 0)."""
    now = datetime.now(UTC)
    since = now - pending_for
    rows = [{"provider": "cryptopocket", "provider_customer_id": pcid, "customer_type": "individual",
             "state": "pending", "provider_status": "processing", "tier": "none", "pending_since": since,
             "attempts": 1, "rejections": 0, "version": 1, "discovered_by": "api", "created_at": since,
             "updated_at": since, "next_poll_at": first_due + spread * i / len(ids), "poll_failures": 0}
            for i, pcid in enumerate(ids)]
    with engine.begin() as conn:
        for start in range(0, len(rows), 1000):
            conn.execute(customers_table.insert(), rows[start:start + 1000])


def worker_env(database_url: str, sim: Simulator, *, interval: timedelta, tick: timedelta, lease: timedelta,
               concurrency: int, rate_limit: str = "none") -> dict[str, str]:
    return {**base_env(), "TRACKER_DATABASE_URL": database_url, "TRACKER_LOG_LEVEL": "warning",
            "TRACKER_CRYPTOPOCKET_BASE_URL": sim.api_url, "TRACKER_CRYPTOPOCKET_API_KEY": API_KEY,
            "TRACKER_CRYPTOPOCKET_API_SECRET": API_SECRET, "TRACKER_POLL_INTERVAL": format_duration(interval),
            "TRACKER_TICK": format_duration(tick), "TRACKER_POLL_LEASE": format_duration(lease),
            "TRACKER_CRYPTOPOCKET_RATE_LIMIT": rate_limit, "TRACKER_CRYPTOPOCKET_CONCURRENCY": str(concurrency)}


# -- the report ------------------------------------------------------------------------------------------------

@dataclass
class Steady:
    window: float
    polls: int
    expected: float
    per_customer_min: int
    per_customer_max: int
    per_worker: dict[int, int]
    unattributed: int
    failed: int  # non-200 answers in the window
    cpu_per_poll: float  # worker CPU seconds per poll over the window, all workers
    cpu_pressure: float | None = None  # share of the window some task on the machine waited for a CPU (PSI)
    # Each customer's polls in the window: (last - first) / (count - 1), averaged over the customers. Unlike the
    # count, which gains or loses one poll per customer whose poll at an edge of the window jitters across it
    # (the tick), it does not depend on where the window's edges fall.
    mean_gap: float = 0.0

    @property
    def deviation(self) -> float:
        return self.polls / self.expected - 1

    @property
    def ok(self) -> bool:
        return abs(self.deviation) <= 0.01 and self.failed == 0 and all(self.per_worker.values())


@dataclass
class HeldCustomer:
    customer: str
    lease_until: float  # unix seconds
    flipped: bool
    victim_polls: int = 0  # requests the killed worker made for it during its claim
    early: list[float] = field(default_factory=list)  # another worker's polls while the lease held
    repoll: float | None = None  # another worker's first poll after the lease expired


@dataclass
class Kill:
    pid: int
    claims_seen: int  # claims the watcher saw before the kill
    killed_at: float  # unix seconds
    held: list[HeldCustomer]
    lease: float
    flipped_mid_run: int
    attempts: int = 1
    leftover_leases: int = 0
    verified_ok: int = 0
    verified_expected: int = 0
    wrong_verified: list[str] = field(default_factory=list)  # flipped, but not verified with exactly one row
    duplicate_rows: list[str] = field(default_factory=list)  # (customer, to_state, trigger) stored twice
    stray_rows: list[str] = field(default_factory=list)  # history of customers that were never flipped

    @property
    def repolled(self) -> list[HeldCustomer]:
        return [h for h in self.held if h.repoll is not None]

    @property
    def delays_after_expiry(self) -> list[float]:
        return [h.repoll - h.lease_until for h in self.held if h.repoll is not None]

    @property
    def delays_after_kill(self) -> list[float]:
        return [h.repoll - self.killed_at for h in self.held if h.repoll is not None]

    @property
    def early(self) -> list[HeldCustomer]:
        return [h for h in self.held if h.early]

    @property
    def ok(self) -> bool:
        return (bool(self.held) and len(self.repolled) == len(self.held) and not self.early
                and all(d <= self.lease for d in self.delays_after_expiry) and self.leftover_leases == 0
                and self.verified_ok == self.verified_expected and not self.wrong_verified
                and not self.duplicate_rows and not self.stray_rows)


@dataclass
class Result:
    workers: int
    customers: int
    interval: float
    warmup: float = 0.0
    steady: Steady | None = None
    kill: Kill | None = None
    gaps: list[float] = field(default_factory=list)  # between consecutive polls of one customer, whole run
    double_polls: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (not self.errors and self.steady is not None and self.steady.ok and self.kill is not None
                and self.kill.ok and not self.double_polls)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# -- one run ---------------------------------------------------------------------------------------------------

@dataclass
class Options:
    customers: int = 300
    interval: timedelta = timedelta(seconds=2)
    duration: float = 60.0
    lease: timedelta = timedelta(seconds=10)
    tick: timedelta = timedelta(milliseconds=200)
    latency: float = 0.02
    concurrency: int = 16
    flip: float = 0.1
    seed: int | None = None
    keep: bool = False


def run(workers: int, options: Options, out: TextIO = sys.stdout) -> Result:
    """One worker count in a fresh database: the steady phase, then the kill phase."""
    result = Result(workers, options.customers, options.interval.total_seconds())
    workdir = Path(tempfile.mkdtemp(prefix=f"workers-{workers}-"))
    print(f"{workers} workers: {options.customers} pending customers, interval {format_duration(options.interval)}, "
          f"tick {format_duration(options.tick)}, lease {format_duration(options.lease)}, concurrency "
          f"{options.concurrency}, simulator latency {options.latency * 1000:.0f} ms, no rate limit; "
          f"{options.duration:.0f} s measured", file=out, flush=True)
    procs: list[Worker] = []
    sim: Simulator | None = None
    try:
        with postgres_database(options.keep, out) as url:
            engine = make_engine(url, pool_size=2)
            try:
                sim = Simulator(workdir, customers=options.customers, latency=options.latency)
                sim.start()
                procs = [Worker(n, worker_env(url, sim, interval=options.interval, tick=options.tick,
                                              lease=options.lease, concurrency=options.concurrency), workdir)
                         for n in range(1, workers + 1)]
                ids = sim_ids(options.customers)
                seed_pending(engine, ids, first_due=datetime.now(UTC) + timedelta(seconds=2), spread=options.interval)
                for proc in procs:
                    proc.start()
                ports = PortMap()
                steady_phase(result, sim, procs, ports, ids, options, out)
                if not result.errors:
                    kill_phase(result, sim, procs, ports, engine, ids, options, out)
                polls = sim.fetch()
                result.gaps, result.double_polls = gaps_and_doubles(polls, options.interval.total_seconds() / 2)
            finally:
                for proc in procs:
                    proc.stop()
                engine.dispose()
    except Exception as exc:  # a broken run is a FAIL with the reason, not a traceback in the middle
        result.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        if sim is not None:
            sim.stop()
        for proc in procs:
            if proc.process is not None and proc.process.returncode not in (0, -signal.SIGKILL, None):
                result.errors.append(f"worker {proc.number} (pid {proc.pid}) exited with {proc.process.returncode}:"
                                     f"\n{proc.tail()}")
        if options.keep:
            print(f"kept {workdir}", file=out)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_result(result, options, out)
    return result


def wait(seconds: float, procs: list[Worker], ports: PortMap, result: Result) -> bool:
    """Sleep ``seconds`` while sampling the workers' ports; False if a worker died meanwhile."""
    end = time.monotonic() + seconds
    while True:
        if time.monotonic() - ports.sampled >= 1.0:  # reading /proc/net/tcp costs CPU the processes measured need
            ports.sample(procs)
        for proc in procs:
            if proc.process is not None and proc.process.returncode is None and not proc.alive():
                result.errors.append(f"worker {proc.number} (pid {proc.pid}) died: {proc.tail()}")
                return False
        left = end - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(0.25, left))


def steady_phase(result: Result, sim: Simulator, procs: list[Worker], ports: PortMap, ids: list[str],
                 options: Options, out: TextIO) -> None:
    started = time.monotonic()
    interval = options.interval.total_seconds()
    while True:  # warm-up: every customer polled, every worker polling
        if not wait(0.5, procs, ports, result):
            return
        polls = sim.fetch()
        seen = {p.customer for p in polls}
        by_worker = Counter(ports.owner.get(p.port or -1) for p in polls)
        if len(seen) >= len(ids) and all(by_worker[proc.pid] for proc in procs):
            break
        if time.monotonic() - started > 60:
            result.errors.append(f"warm-up: after 60 s, {len(seen)} of {len(ids)} customers polled, polls by "
                                 f"worker {dict(by_worker)}")
            return
    result.warmup = time.monotonic() - started
    print(f"  warm-up: every customer polled and every worker polling after {result.warmup:.1f} s", file=out,
          flush=True)
    if not wait(interval, procs, ports, result):
        return
    t0 = time.monotonic()
    cpu0, stall0 = sum(proc.cpu_seconds() for proc in procs), cpu_stall()
    if not wait(options.duration, procs, ports, result):
        return
    t1 = t0 + options.duration
    cpu1, stall1 = sum(proc.cpu_seconds() for proc in procs), cpu_stall()
    pressure = (stall1 - stall0) / (time.monotonic() - t0) if stall0 is not None and stall1 is not None else None
    if not wait(1.0, procs, ports, result):  # let the requests of the window's last instant be logged
        return
    inside = [p for p in sim.fetch() if t0 <= p.mono < t1]
    per_customer = Counter(p.customer for p in inside)
    per_worker = Counter(ports.owner.get(p.port or -1) for p in inside)
    times: dict[str, list[float]] = {}
    for p in inside:
        times.setdefault(p.customer, []).append(p.mono)
    spans = [(max(t) - min(t)) / (len(t) - 1) for t in times.values() if len(t) > 1]
    result.steady = Steady(
        window=options.duration, polls=len(inside), expected=len(ids) * options.duration / interval,
        per_customer_min=min(per_customer[c] for c in ids), per_customer_max=max(per_customer[c] for c in ids),
        per_worker={proc.pid: per_worker[proc.pid] for proc in procs}, unattributed=per_worker[None],
        failed=sum(1 for p in inside if p.status != 200), cpu_per_poll=(cpu1 - cpu0) / max(1, len(inside)),
        cpu_pressure=pressure, mean_gap=statistics.fmean(spans) if spans else 0.0,
    )


def gaps_and_doubles(polls: list[Poll], minimum: float) -> tuple[list[float], list[str]]:
    by_customer: dict[str, list[float]] = defaultdict(list)
    for poll in polls:
        by_customer[poll.customer].append(poll.mono)
    gaps: list[float] = []
    doubles: list[str] = []
    for customer, stamps in by_customer.items():
        stamps.sort()
        for before, after in itertools.pairwise(stamps):
            gaps.append(after - before)
            if after - before < minimum:
                doubles.append(f"{customer}: polled {after - before:.3f} s after the previous poll")
    return gaps, doubles


def kill_phase(result: Result, sim: Simulator, procs: list[Worker], ports: PortMap, engine: Engine,
               ids: list[str], options: Options, out: TextIO) -> None:
    rng = random.Random(options.seed)
    lease = options.lease.total_seconds()
    flipped = set(rng.sample(ids, max(1, round(len(ids) * options.flip))))
    sim.set_status(sorted(flipped), "valid")  # applied by whichever worker polls them next
    held_query = text("SELECT provider_customer_id, poll_lease_until FROM customers WHERE poll_lease_owner LIKE :p "
                      "ORDER BY id")
    attempts = 0
    while True:  # a claim can be finished between the moment it is seen and the kill: then try another worker
        attempts += 1
        victim = next(proc for proc in procs if proc.alive())
        ports.sample(procs)  # everyone's connections, just before (not between seeing a claim and the kill)
        claims_seen = 0
        with engine.connect() as conn:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                claims_seen = len(conn.execute(held_query, {"p": victim.owner_pattern}).all())
                conn.rollback()
                if claims_seen:
                    break
                time.sleep(0.002)
            if not claims_seen:
                result.errors.append(f"kill: worker pid {victim.pid} held no claim for 30 s")
                return
            victim.kill()
            killed_at = time.time()
            held_rows = conn.execute(held_query, {"p": victim.owner_pattern}).all()
            conn.rollback()
        if held_rows or attempts == 3:
            break
        print(f"  kill attempt {attempts}: worker pid {victim.pid} had finished its {claims_seen} claims when it died; "
              f"a new worker replaces it, and the next one is killed", file=out, flush=True)
        replacement = Worker(len(procs) + 1, victim.env, victim.log_path.parent)
        replacement.start()
        procs.append(replacement)
        if not wait(3.0, [proc for proc in procs if proc.alive()], ports, result):
            return
    held = [HeldCustomer(row.provider_customer_id, row.poll_lease_until.timestamp(), False) for row in held_rows]
    for h in held[::2]:  # half of what it held changes at the provider while its leases still hold
        h.flipped = True
    sim.set_status([h.customer for h in held if h.flipped], "valid")
    flipped |= {h.customer for h in held if h.flipped}
    kill = Kill(victim.pid, claims_seen, killed_at, held, lease, len(flipped) - sum(h.flipped for h in held))
    result.kill = kill
    kill.attempts = attempts
    survivors = [proc for proc in procs if proc.alive()]
    last_expiry = max((h.lease_until for h in held), default=killed_at)
    if not wait(max(0.0, last_expiry - time.time()) + options.tick.total_seconds() + 3, survivors, ports, result):
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the customers that turned valid are polled within one interval
        with engine.connect() as conn:
            verified = conn.execute(text("SELECT count(*) FROM customers WHERE state = 'verified'")).scalar_one()
        if verified >= len(flipped):
            break
        if not wait(0.5, survivors, ports, result):
            return

    polls = sim.fetch()
    victim_ports = ports.ports_of(victim.pid)

    def by_victim(poll: Poll) -> bool:
        return poll.at < killed_at or (poll.port in victim_ports and poll.at < killed_at + 1.0)

    for h in held:
        claimed_at = h.lease_until - lease
        mine = sorted((p for p in polls if p.customer == h.customer), key=lambda p: p.at)
        h.victim_polls = sum(1 for p in mine if by_victim(p) and p.at >= claimed_at)
        h.early = [p.at - claimed_at for p in mine if not by_victim(p) and claimed_at <= p.at < h.lease_until]
        h.repoll = next((p.at for p in mine if not by_victim(p) and p.at >= h.lease_until), None)

    with engine.connect() as conn:
        kill.leftover_leases = len(conn.execute(held_query, {"p": victim.owner_pattern}).all())
        rows = conn.execute(text("SELECT c.provider_customer_id, c.state, h.to_state, h.trigger FROM history h "
                                 "JOIN customers c ON c.id = h.customer_id")).all()
        states = dict(conn.execute(text("SELECT provider_customer_id, state FROM customers")).all())
    counts = Counter((row.provider_customer_id, row.to_state, row.trigger) for row in rows)
    kill.duplicate_rows = [f"{c} -> {s} ({t}) x{n}" for (c, s, t), n in counts.items() if n > 1]
    kill.stray_rows = sorted({f"{c} -> {s} ({t})" for (c, s, t) in counts if c not in flipped})
    kill.verified_expected = len(flipped)
    for customer in sorted(flipped):
        approved = counts[(customer, "verified", "provider_approved")]
        if states.get(customer) == "verified" and approved == 1:
            kill.verified_ok += 1
        else:
            kill.wrong_verified.append(f"{customer}: state {states.get(customer)}, {approved} provider_approved rows")


# -- printing --------------------------------------------------------------------------------------------------

def print_result(result: Result, options: Options, out: TextIO = sys.stdout) -> None:
    s = result.steady
    half = result.interval / 2
    if s is not None:
        print(f"  steady, {s.window:.0f} s with all {result.workers} workers: {s.polls} polls, expected "
              f"{result.customers} x {s.window / result.interval:g} = {s.expected:.0f}: {s.deviation:+.2%} "
              f"(must be within 1 %)", file=out)
        workers = ", ".join(f"pid {pid}: {n}" for pid, n in s.per_worker.items())
        print(f"    per customer {s.per_customer_min}..{s.per_customer_max}; per worker {workers}"
              f"{f', unattributed {s.unattributed}' if s.unattributed else ''}; failed requests {s.failed}; "
              f"worker CPU {s.cpu_per_poll * 1000:.2f} ms per poll; mean gap in the window {s.mean_gap:.3f} s "
              f"({s.mean_gap / result.interval - 1:+.2%} of the interval)", file=out)
        if s.cpu_pressure is not None:
            print(f"    machine: some task waited for a CPU {s.cpu_pressure:.0%} of the window (PSI: the workers, "
                  f"PostgreSQL and the simulator share it with whatever else runs)", file=out)
    if result.gaps:
        g = result.gaps
        print(f"  gaps between two polls of one customer (whole run): min {min(g):.3f} s, median "
              f"{statistics.median(g):.3f} s, p99 {percentile(g, 0.99):.3f} s; double polls (< {half:g} s apart): "
              f"{len(result.double_polls)} (must be 0)", file=out)
    k = result.kill
    if k is not None:
        flipped_held = sum(h.flipped for h in k.held)
        again = f" (attempt {k.attempts}: the earlier ones had finished their claims)" if k.attempts > 1 else ""
        print(f"  kill -9 of worker pid {k.pid}{again} with {len(k.held)} claims held at its death "
              f"({k.claims_seen} seen "
              f"by the watcher; it had sent {sum(1 for h in k.held if h.victim_polls)} of their requests); "
              f"{flipped_held} of them and {k.flipped_mid_run} other customers turned valid at the provider",
              file=out)
        after, since_kill = k.delays_after_expiry, k.delays_after_kill
        nan = float("nan")
        print(f"    re-polled by another worker: {len(k.repolled)} of {len(k.held)} (must be all); after the lease "
              f"expired: max {max(after, default=nan):.2f} s (must be <= {k.lease:g} s); after the kill: "
              f"{min(since_kill, default=nan):.2f}..{max(since_kill, default=nan):.2f} s", file=out)
        print(f"    polled by another worker while the lease held: {len(k.early)} (must be 0); leases of the dead "
              f"worker left: {k.leftover_leases} (must be 0)", file=out)
        print(f"    transitions: {k.verified_ok} of {k.verified_expected} customers verified with exactly one "
              f"provider_approved row; duplicate history rows {len(k.duplicate_rows)}, history rows of customers "
              f"never flipped {len(k.stray_rows)} (must be all, 0, 0)", file=out)
        for label, items in (("not repolled", [h.customer for h in k.held if h.repoll is None]),
                             ("early", [f"{h.customer} at +{h.early}" for h in k.early]),
                             ("wrong", k.wrong_verified), ("duplicate", k.duplicate_rows),
                             ("stray", k.stray_rows)):
            for item in items[:10]:
                print(f"      {label}: {item}", file=out)
    for item in result.double_polls[:10]:
        print(f"    double poll: {item}", file=out)
    for error in result.errors:
        print(f"  error: {error}", file=out)
    print(f"{result.workers} workers: {'PASS' if result.passed else 'FAIL'}", file=out, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="2,3", help="worker counts to run, comma-separated (default 2,3)")
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--interval", default="2s", help="TRACKER_POLL_INTERVAL (default 2s)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds measured in the steady phase")
    parser.add_argument("--lease", default="10s", help="TRACKER_POLL_LEASE (default 10s)")
    parser.add_argument("--tick", default="200ms", help="TRACKER_TICK (default 200ms)")
    parser.add_argument("--latency", type=float, default=0.02, help="simulator latency in seconds (default 0.02)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="TRACKER_CRYPTOPOCKET_CONCURRENCY (default 16)")
    parser.add_argument("--flip", type=float, default=0.1, help="part of the customers turned valid mid-run")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the databases and logs")
    args = parser.parse_args(argv)
    options = Options(customers=args.customers, interval=parse_duration(args.interval), duration=args.duration,
                      lease=parse_duration(args.lease), tick=parse_duration(args.tick), latency=args.latency,
                      concurrency=args.concurrency, flip=args.flip, seed=args.seed, keep=args.keep)
    results = []
    for count in (int(part) for part in args.workers.split(",")):
        results.append(run(count, options))
        print()
    verdict = all(r.passed for r in results)
    print("workers: " + ", ".join(f"{r.workers} {'PASS' if r.passed else 'FAIL'}" for r in results)
          + f" => {'PASS' if verdict else 'FAIL'}")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
