"""The machinery of bench/ingest: the events, the signed request pools, the processes, wrk, the database.

bench/ingest.py has the modes, the targets and the report (see its docstring); this module only helps it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECRET = "whsec_bench_blaaiz_1"
PATH = "/webhooks/blaaiz"
HOST = "127.0.0.1"  # the only address this bench sends to
PG_ADMIN = os.environ.get("BENCH_POSTGRES_URL",
                          os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
REJECTION_REASONS = ("Document is blurry", "Name mismatch between ID and profile", "Expired passport",
                     "Selfie does not match the identity document", "Cropped document")


# --- the events -------------------------------------------------------------------------------------------

class Feed:
    """Realistic Blaaiz customer webhooks over a set of known customers (and a few unknown ones).

    Each customer follows a plausible provider-side story (PENDING -> PROCESSING -> REJECTED -> PROCESSING ->
    VERIFIED, with re-sent statuses and the odd contradiction), so the applier does real lifecycle work:
    transitions with history rows, no-ops, refusals, conflicts, customers discovered from webhooks.
    ``updated_at`` moves on by 1 ms per event, so every event has its own content and is newer than the last.
    """

    unknown_share = 0.03

    def __init__(self, statuses: dict[str, str], rng: random.Random, start: datetime) -> None:
        self.statuses = statuses
        self.pcids = list(statuses)
        self.rng = rng
        self.start = start
        self.count = 0

    def _next_status(self, old: str) -> tuple[str, str]:
        roll = self.rng.random()
        if old == "PENDING":
            return "customer.status_changed", "PROCESSING"
        if old == "PROCESSING":
            if roll < 0.55:
                return "customer.status_changed", "REJECTED"
            if roll < 0.70:
                return "customer.verified", "VERIFIED"
            if roll < 0.85:
                return "customer.status_changed", "PROCESSING"  # a re-sent status: no move
            return "customer.status_changed", "PENDING"  # Blaaiz PENDING moves nothing
        if old == "REJECTED":
            return "customer.status_changed", "PROCESSING"  # resubmitted
        if roll < 0.9:  # VERIFIED
            return "customer.verified", "VERIFIED"
        return "customer.rejected", "REJECTED"  # contradicts a final decision: a conflict

    def event(self, phase: str) -> bytes:
        self.count += 1
        n = self.count
        if self.rng.random() < self.unknown_share:
            pcid, old, event_type, new = f"cus_new_{phase}{n:08d}", None, "customer.created", "PENDING"
            if self.rng.random() < 0.5:
                event_type, new, old = "customer.status_changed", "PROCESSING", "PENDING"
        else:
            pcid = self.rng.choice(self.pcids)
            old = self.statuses[pcid]
            event_type, new = self._next_status(old)
            self.statuses[pcid] = new
        updated_at = self.start + timedelta(milliseconds=n)
        payload = {
            "message": "Customer status updated",
            "event_type": event_type,
            "customer_id": pcid,
            "customer_email": f"{pcid}@example.invalid",
            "old_status": old,
            "new_status": new,
            "comment": self.rng.choice(REJECTION_REASONS) if new == "REJECTED" else None,
            "updated_at": updated_at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{updated_at.microsecond // 1000:03d}Z",
            "event_id": f"evt_{phase}_{n:09d}",
            "type": "customer",
        }
        return json.dumps(payload, separators=(",", ":")).encode()


class RepeatFeed(Feed):
    """The soak's events: the same known customers over and over, most events re-sent statuses that move
    nothing (PENDING and PROCESSING again, VERIFIED again), each with a fresh event id and a fresh
    ``updated_at``. About 3 % are real moves (a rejection, then the resubmission after it)."""

    unknown_share = 0.0

    def _next_status(self, old: str) -> tuple[str, str]:
        roll = self.rng.random()
        if old == "REJECTED":
            return "customer.status_changed", "PROCESSING"  # resubmitted: a move
        if old == "VERIFIED":
            return "customer.verified", "VERIFIED"
        if old == "PROCESSING" and roll < 0.015:
            return "customer.status_changed", "REJECTED"  # a move
        if old == "PENDING" and roll < 0.005:
            return "customer.status_changed", "PROCESSING"  # documents in: a move
        return "customer.status_changed", old  # re-sent: no move


def write_pool(feed: Feed, phase: str, count: int, threads: int, prefix: Path, timestamp: int | None = None
               ) -> None:
    """``count`` signed requests, dealt round-robin into one file per wrk thread (see bench/webhook.lua).
    Signed at ``timestamp`` (unix seconds; default now): the tracker accepts 300 s either side of it."""
    bodies = [feed.event(phase) for _ in range(count)]
    sign_pool(bodies, threads, prefix, int(time.time()) if timestamp is None else timestamp)


def sign_pool(bodies: list[bytes], threads: int, prefix: Path, timestamp: int) -> None:
    key = SECRET.encode()
    head = str(timestamp).encode() + b"."
    files = [open(f"{prefix}.{i + 1}", "wb") for i in range(threads)]  # noqa: SIM115
    try:
        for n, body in enumerate(bodies):
            signature = hmac.new(key, head + body, hashlib.sha256).hexdigest()
            files[n % threads].write(f"{timestamp}\t{signature}\t".encode() + body + b"\n")
    finally:
        for handle in files:
            handle.close()


# --- processes --------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any TRACKER_ setting (the tracker refuses unknown ones), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}
    env.update(extra)
    return env


@dataclass
class Server:
    name: str
    command: list[str]
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, workdir: Path) -> None:
        self.log = workdir / f"{self.name}.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([*self.command, "--host", HOST, "--port", str(self.port)],
                                            env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start-up:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer /healthz within 60 s")

    def implementation(self) -> str:
        """Which event loop and HTTP parser the server process has loaded (uvicorn picks them at start)."""
        assert self.process is not None
        try:
            maps = Path(f"/proc/{self.process.pid}/maps").read_text()
        except OSError:
            return "unknown"
        loop = "uvloop" if "uvloop" in maps else "asyncio"
        http = "httptools" if "httptools" in maps else "h11"
        return f"{loop}+{http}"

    def metrics(self) -> str:
        try:
            with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as answer:
                return str(answer.read().decode())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return ""

    def log_tail(self, lines: int = 20) -> list[str]:
        """The server log's last lines that look like problems (warnings, errors, tracebacks)."""
        if self.log is None or not self.log.exists():
            return []
        wanted = [line for line in self.log.read_text(errors="replace").splitlines()
                  if any(word in line for word in ("WARNING", "ERROR", "Traceback", "Exception", "error"))]
        return wanted[-lines:]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def cpu_of(pid: int) -> float | None:
    """User + system CPU seconds of one process so far (Linux /proc); None once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuWatch:
    """CPU seconds used by named groups of processes since the watch began. Each group is listed again at every
    look, so a process that appears later counts from its start, and one that has gone keeps what it was last
    seen to use (PostgreSQL's backends and autovacuum workers come and go)."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self.seen: dict[str, dict[int, list[float]]] = {name: {} for name in groups}  # pid -> [first, last]
        for name, list_pids in groups.items():
            for pid in list_pids():
                cpu = cpu_of(pid)
                if cpu is not None:
                    self.seen[name][pid] = [cpu, cpu]

    def used(self) -> dict[str, float]:
        out = {}
        for name, list_pids in self.groups.items():
            seen = self.seen[name]
            for pid in set(list_pids()) | set(seen):
                cpu = cpu_of(pid)
                if cpu is None:
                    continue
                if pid in seen:
                    seen[pid][1] = cpu
                else:
                    seen[pid] = [0.0, cpu]  # new since the watch began: all of its CPU is in the window
            out[name] = sum(last - first for first, last in seen.values())
        return out


@dataclass
class Load:
    """What wrk saw (and, for a paced run, how well it kept the pace)."""

    completed: int
    sent: int
    ok: int
    non_2xx: int
    codes: str
    socket_errors: int
    wrapped: int
    answers: dict[str, int]  # 2xx answers by their "status": accepted, duplicate, ignored
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    started: float  # unix seconds: wrk started, and wrk exited (after its last answer)
    ended: float
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds used during the run, by process group
    pace: dict[str, Any] | None = None

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def in_flight(self) -> int:
        return max(self.sent - self.completed, 0)


def run_wrk(url: str, prefix: Path, seconds: float, connections: int, threads: int,
            watch: CpuWatch | None = None, pace: tuple[float, int] | None = None) -> Load:
    """Run wrk over a request pool (bench/webhook.lua); ``pace`` = (requests/s, count) sends ``count``
    requests at that pace instead (bench/webhook_paced.lua; ``seconds`` should leave a margin after the
    last). ``watch`` records the CPU of groups of processes over the run; wrk's own is always recorded."""
    script, extra = "webhook.lua", []
    if pace is not None:
        script, extra = "webhook_paced.lua", [f"{pace[0] / threads:g}", str(pace[1] // threads)]
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
               "-s", str(HERE / script), url + PATH, "--", str(prefix), PATH, *extra]
    before = watch.used() if watch else {}
    children = os.times()
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=seconds + 600)
    ended = time.time()
    after = os.times()
    cpu = {name: value - before[name] for name, value in watch.used().items()} if watch else {}
    cpu["wrk"] = (after.children_user + after.children_system) - (children.children_user + children.children_system)
    lines = {x.split(" ", 1)[0]: x.split(" ", 1)[1] for x in done.stdout.splitlines() if x.endswith("}")}
    if done.returncode != 0 or "BENCH_JSON" not in lines:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    data = json.loads(lines["BENCH_JSON"])
    return Load(
        completed=data["completed"], sent=data["sent"], ok=data["ok"], non_2xx=data["non_2xx"],
        codes=data["codes"].strip(), wrapped=data["wrapped"],
        answers={k: data[k] for k in ("accepted", "duplicate", "ignored")},
        socket_errors=data["connect_errors"] + data["read_errors"] + data["write_errors"] + data["timeouts"],
        seconds=data["duration_us"] / 1e6, p50_ms=data["p50_us"] / 1000, p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000, max_ms=data["max_us"] / 1000, started=started, ended=ended, cpu=cpu,
        pace=json.loads(lines["PACE_JSON"]) if "PACE_JSON" in lines else None,
    )


# --- databases --------------------------------------------------------------------------------------------

def create_pg_database(admin_url: str) -> str:
    import psycopg

    name = f"bench_ingest_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{admin_url.rsplit('/', 1)[0]}/{name}"


def drop_pg_database(admin_url: str, url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_backends(database_url: str) -> list[int]:
    """The server processes serving connections to this database (the tracker's, autovacuum's)."""
    import psycopg

    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        return [row[0] for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (name,))]


def upgrade(database_url: str) -> None:
    env = clean_env(TRACKER_DATABASE_URL=database_url, TRACKER_LOG_LEVEL="warning")
    done = subprocess.run([sys.executable, "-m", "tracker.cli", "db", "upgrade"], env=env, cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"tracker db upgrade failed:\n{done.stdout}\n{done.stderr}")


def seed_database(database_url: str, count: int, past_events: int, rng: random.Random) -> dict[str, str]:
    """What a service that has been running for a while holds: ``count`` known Blaaiz customers in a mix of
    states, and an inbox of ``past_events`` earlier deliveries for them, all applied long ago, with planner
    statistics gathered. Returns each customer's current provider status."""
    from sqlalchemy import select

    from tracker.db.engine import make_engine
    from tracker.db.tables import customers, inbound_events

    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    statuses: dict[str, str] = {}
    for n in range(count):
        pcid = f"cus_{n:06d}"
        roll = rng.random()
        created = now - timedelta(hours=rng.uniform(1, 24 * 30))
        row: dict[str, Any] = {
            "provider": "blaaiz", "provider_customer_id": pcid, "reference": f"user-{n}",
            "customer_type": "individual" if rng.random() < 0.9 else "business", "state": "awaiting_documents",
            "provider_status": "PENDING", "tier": "none", "pending_since": None, "decided_at": None,
            "last_provider_time": None, "rejection_reason": None, "attempts": 0, "rejections": 0, "version": 1,
            "discovered_by": "api", "flags": None, "created_at": created, "updated_at": created,
        }
        if roll < 0.40:
            pass  # awaiting documents
        elif roll < 0.80:
            row.update(state="pending", provider_status="PROCESSING", attempts=1, version=2,
                       pending_since=now - timedelta(minutes=rng.uniform(1, 240)))
        elif roll < 0.95:
            row.update(state="rejected", provider_status="REJECTED", attempts=1, rejections=1, version=3,
                       decided_at=created, rejection_reason=rng.choice(REJECTION_REASONS))
        else:
            row.update(state="verified", provider_status="VERIFIED", attempts=1, version=3, decided_at=created)
        rows.append(row)
        statuses[pcid] = row["provider_status"]
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(customers.insert(), rows)
            ids: dict[str, int] = dict(conn.execute(select(customers.c.provider_customer_id, customers.c.id)).all())
            pcids = list(ids)
            for start in range(0, past_events, 10_000):
                inbox = []
                for n in range(start, min(start + 10_000, past_events)):
                    pcid = pcids[n % len(pcids)]
                    at = now - timedelta(days=30) + timedelta(seconds=n)
                    status = ("PROCESSING", "REJECTED", "VERIFIED", "PENDING")[n % 4]
                    body = {"event_type": "customer.status_changed", "customer_id": pcid, "new_status": status,
                            "updated_at": at.isoformat(), "event_id": f"evt_past_{n:09d}", "type": "customer"}
                    outcome = ("ignored", "applied", "no_change")[n % 3]
                    inbox.append({
                        "provider": "blaaiz", "event_id": body["event_id"],
                        "fingerprint": hashlib.sha256(json.dumps(body).encode()).hexdigest(),
                        "event_type": body["event_type"], "provider_customer_id": pcid, "customer_id": ids[pcid],
                        "provider_status": status, "provider_time": at, "headers": None,
                        "body": json.dumps(body).encode(), "received_at": at,
                        "processed_at": at + timedelta(milliseconds=5), "outcome": outcome, "reason": None,
                        "duplicate_of": None, "attempts": 0 if outcome == "ignored" else 1,
                    })
                conn.execute(inbound_events.insert(), inbox)
        with engine.connect() as conn:
            # A production database has planner statistics (autovacuum keeps them current).
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    finally:
        engine.dispose()
    return statuses


def settle(database_url: str) -> None:
    """Write the seed out before measuring: PostgreSQL's dirty buffers (CHECKPOINT), then the kernel's dirty
    pages (sync). The seed writes a few hundred MB in seconds; left in the page cache, the kernel writes it
    back 30 s later (``vm.dirty_expire_centisecs``), in the middle of the measured run, and every commit's
    fsync waits behind it (PostgreSQL p99 45-58 ms in such runs on 2026-12-05, 17-22 ms in the others).
    A service in its steady state writes back only its own writes."""
    if database_url.startswith("postgresql"):
        from tracker.db.engine import make_engine

        engine = make_engine(database_url)
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("CHECKPOINT")
        finally:
            engine.dispose()
    os.sync()


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]  # nearest rank


@dataclass
class Stored:
    """The inbox rows of one phase of the bench (its event ids: ``evt_<phase>_*``)."""

    stored: int  # first deliveries (duplicate_of IS NULL)
    duplicates: int  # rows stored as copies of another (none expected: every event is distinct)
    repeated_ids: int  # event ids on more than one first delivery (none possible while the unique index holds)
    unapplied: int  # processed_at still NULL
    failed: int  # applied with outcome error or rejected
    outcomes: dict[str, int]
    lags_ms: list[float]  # processed_at - received_at of every applied row
    first_received: datetime | None
    last_received: datetime | None
    last_processed: datetime | None
    first_processed: datetime | None
    batches: list[tuple[datetime, int]] = field(default_factory=list)  # the applier's: (processed_at, rows)

    @property
    def applied(self) -> int:
        return len(self.lags_ms)

    def lag(self, fraction: float) -> float:
        return percentile(self.lags_ms, fraction)

    def batch_note(self) -> str:
        """The applier's batches (rows that share a processed_at: the clock at the start of the batch's
        transaction) and the time between consecutive batch starts (a batch's transaction, a wait for the
        write lock included, plus any idle time before the next one)."""
        if not self.batches:
            return "applier batches: none"
        sizes = [float(n) for _, n in self.batches]
        gaps = [(b - a).total_seconds() * 1000 for (a, _), (b, _) in zip(self.batches, self.batches[1:],
                                                                          strict=False)]
        return (f"applier batches: {len(sizes)}, rows per batch p50 {percentile(sizes, 0.5):.0f}, p99 "
                f"{percentile(sizes, 0.99):.0f}, max {max(sizes):.0f}; between batch starts p50 "
                f"{percentile(gaps, 0.5):.1f} ms, p99 {percentile(gaps, 0.99):.1f}, max {max(gaps, default=0):.1f}")


class Inbox:
    """What the tracker has stored and applied, read from its database by the bench."""

    def __init__(self, database_url: str) -> None:
        from tracker.db.engine import make_engine

        self.engine = make_engine(database_url, pool_size=1)

    def close(self) -> None:
        self.engine.dispose()

    def counts(self) -> tuple[int, int]:
        """(rows not applied yet, the newest row's id): cheap enough to poll (the first is the applier's
        partial index, the second the primary key's end)."""
        from sqlalchemy import func, select

        from tracker.db.tables import inbound_events as ev

        with self.engine.connect() as conn:
            backlog = conn.execute(select(func.count()).select_from(ev).where(ev.c.processed_at.is_(None)))
            newest = conn.execute(select(func.max(ev.c.id)))
            return int(backlog.scalar_one()), int(newest.scalar_one() or 0)

    def wait_applied(self, timeout: float, poll: float = 0.02) -> float | None:
        """Wait until nothing waits to be applied and nothing new arrives (two looks 0.2 s apart); the wall
        time (unix seconds) of the first look that found the backlog empty, or None after ``timeout``."""
        deadline = time.monotonic() + timeout
        empty_since: tuple[float, float, int] | None = None  # (monotonic, unix, newest id) when first seen empty
        while time.monotonic() < deadline:
            backlog, newest = self.counts()
            if backlog:
                empty_since = None
            elif empty_since is None or newest != empty_since[2]:
                empty_since = (time.monotonic(), time.time(), newest)
            elif time.monotonic() - empty_since[0] >= 0.2:
                return empty_since[1]
            time.sleep(poll)
        return None

    def phase(self, phase: str) -> Stored:
        from sqlalchemy import func, select

        from tracker.db.tables import inbound_events as ev

        with self.engine.connect() as conn:
            of_phase = ev.c.event_id.like(f"evt_{phase}_%")
            first = ev.c.duplicate_of.is_(None)
            outcomes = {row.outcome: row.n for row in conn.execute(
                select(ev.c.outcome, func.count().label("n")).where(of_phase, first).group_by(ev.c.outcome))}
            duplicates = conn.execute(select(func.count()).select_from(ev).where(
                of_phase, ev.c.duplicate_of.is_not(None))).scalar_one()
            distinct = conn.execute(select(func.count(ev.c.event_id.distinct())).where(of_phase, first)).scalar_one()
            times = conn.execute(select(ev.c.received_at, ev.c.processed_at, ev.c.outcome).where(
                of_phase, first)).all()
        applied = [(received, processed) for received, processed, outcome in times
                   if processed is not None and outcome not in ("error", "rejected")]
        stored = sum(outcomes.values())
        return Stored(
            stored=stored, duplicates=int(duplicates), repeated_ids=stored - int(distinct),
            unapplied=sum(1 for _, processed, _ in times if processed is None),
            failed=sum(1 for _, processed, outcome in times if processed is not None
                       and outcome in ("error", "rejected")),
            outcomes=outcomes, lags_ms=[(p - r).total_seconds() * 1000 for r, p in applied],
            first_received=min((r for r, _, _ in times), default=None),
            last_received=max((r for r, _, _ in times), default=None),
            last_processed=max((p for _, p, _ in times if p is not None), default=None),
            first_processed=min((p for _, p, _ in times if p is not None), default=None),
            batches=sorted(Counter(p for _, p, outcome in times if p is not None
                                   and outcome not in ("ignored", "rejected")).items()),
        )

    def window(self, start: float, end: float) -> tuple[int, int]:
        """(rows received, rows applied) between two unix times."""
        from sqlalchemy import func, select

        from tracker.db.tables import inbound_events as ev

        a, b = datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)
        with self.engine.connect() as conn:
            received = conn.execute(select(func.count()).select_from(ev).where(
                ev.c.received_at >= a, ev.c.received_at < b)).scalar_one()
            applied = conn.execute(select(func.count()).select_from(ev).where(
                ev.c.processed_at >= a, ev.c.processed_at < b, ev.c.outcome.not_in(("ignored", "rejected"))
            )).scalar_one()
        return int(received), int(applied)

    def store_backlog(self, feed: Feed, phase: str, count: int) -> None:
        """Store ``count`` events as the webhook path stores them (the tracker's own inbox rows and INSERT),
        without waking anyone: the server's applier finds them at its next look."""
        from tracker.inbox.store import Delivery, store_now
        from tracker.providers import blaaiz

        now = datetime.now(UTC)
        deliveries = []
        for _ in range(count):
            payload = json.loads(feed.event(phase))
            body = json.dumps(blaaiz.scrub(payload), separators=(",", ":")).encode()
            deliveries.append(Delivery("blaaiz", now, body, {"user-agent": "Blaaiz-Webhooks/1.0 (bench)"},
                                       blaaiz.parse(payload)))
        for start in range(0, len(deliveries), 256):
            store_now(self.engine, deliveries[start:start + 256])


def inbox_table_note(database_url: str) -> str:
    """The inbox table's size (and on PostgreSQL its dead rows and vacuums): what a long run leaves behind."""
    from tracker.db.engine import make_engine

    engine = make_engine(database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                row = conn.exec_driver_sql(
                    "SELECT n_live_tup, n_dead_tup, n_tup_upd, n_tup_hot_upd, autovacuum_count, autoanalyze_count, "
                    "pg_table_size('inbound_events'), pg_indexes_size('inbound_events') FROM pg_stat_user_tables "
                    "WHERE relname = 'inbound_events'").one()
                autovacuum = conn.exec_driver_sql("SHOW autovacuum").scalar_one()
                return (f"inbound_events: {row[0]} live rows, {row[1]} dead, {row[2]} updated ({row[3]} HOT), "
                        f"autovacuum {row[4]}x, autoanalyze {row[5]}x (autovacuum is {autovacuum} on this server); "
                        f"table {row[6] / 2**20:.0f} MB, indexes {row[7] / 2**20:.0f} MB")
            pages, size = (conn.exec_driver_sql(f"PRAGMA {name}").scalar_one() for name in ("page_count", "page_size"))
            return f"database file {pages * size / 2**20:.0f} MB"
    finally:
        engine.dispose()


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def metric_sums(metrics: str, name: str) -> dict[str, float]:
    """Samples of one Prometheus family, by their text after the name (labels, _sum, _count...)."""
    out = {}
    for line in metrics.splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            out[key[len(name):]] = float(value)
    return out
