"""bench/ingest: signed-webhook ingest throughput of ``tracker serve``, against a bare Starlette endpoint.

One command (``bench/ingest`` or ``python bench/ingest.py``). For each backend (SQLite, PostgreSQL or both) it:

1. measures the bare endpoint (bench/bare_app.py: reads the body, answers a small JSON 200, served by
   uvicorn with the same settings as ``tracker serve``),
2. creates a fresh database (``tracker db upgrade``; PostgreSQL: a database ``bench_ingest_<random>``, dropped
   afterwards), seeds what a service that has run for a while holds (10,000 customers in a mix of states, an
   inbox of 100,000 earlier deliveries, planner statistics), starts ``tracker serve --no-worker`` and measures
   ``POST /webhooks/blaaiz``: realistic status webhooks for those customers (reviews starting, rejections with
   reasons, approvals, re-sent statuses, the odd contradiction; 3% for customers the tracker has never seen),
3. counts in the database what the tracker stored and applied, and checks it against what wrk saw acknowledged.

It also prints the CPU each process used per acknowledged request (the server, PostgreSQL's backends for the
bench database, wrk), which is what the ratio to the bare endpoint comes down to.

Load: wrk (Debian's native load generator) over loopback, 32 connections by default, a short warm-up then a
fixed measured run, the same wrk settings for the bare endpoint and the tracker. wrk has no HMAC, so every
request is generated and signed here beforehand and replayed by bench/webhook.lua exactly once: each one has
its own ``event_id`` and its own content (``updated_at`` moves by 1 ms per event), so nothing is a duplicate.
The signatures use the current time and the tracker keeps its default 300 s timestamp window.

wrk runs with 1 thread by default: the machine may have only 2 cores, and every cycle wrk takes is one the
server under test does not get; one wrk thread drives 32 connections far faster than any Python server
answers. The choice is the same for both targets.

Targets (each tracker run gets PASS or FAIL):
  throughput   acknowledged (2xx) webhooks/s >= 0.5 x the bare endpoint's requests/s (same backend pass)
  latency      p99 <= 25 ms (wrk's latency: request written -> response read)
  errors       zero non-2xx answers, zero socket errors or timeouts
  stored       every acknowledged event is in the inbox (stored >= acked). Stored may exceed acked by the
               requests still in flight when wrk stopped (stored - acked <= sent - completed).
  applied      every stored event was applied (processed_at set, outcome neither error nor rejected)
  apply p99    processed_at - received_at <= 100 ms at p99. processed_at is written in the same transaction
               that stores the event, and that transaction commits before the 2xx is sent, so every
               acknowledged event was applied before its acknowledgement; this column is the stricter
               receive -> applied delay (queueing for the group commit included).

Exit status 0 unless --strict is given and a target fails (or the run is invalid).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SECRET = "whsec_bench_blaaiz_1"
PATH = "/webhooks/blaaiz"
PG_ADMIN = os.environ.get("BENCH_POSTGRES_URL",
                          os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))

TARGET_RATIO = 0.5
TARGET_P99_MS = 25.0
TARGET_APPLY_P99_MS = 100.0

REJECTION_REASONS = ("Document is blurry", "Name mismatch between ID and profile", "Expired passport",
                     "Selfie does not match the identity document", "Cropped document")


# --- the events -------------------------------------------------------------------------------------------

class Feed:
    """Realistic Blaaiz customer webhooks over a set of known customers (and a few unknown ones).

    Each customer follows a plausible provider-side story (PENDING -> PROCESSING -> REJECTED -> PROCESSING ->
    VERIFIED, with re-sent statuses and the odd contradiction), so the tracker does real lifecycle work:
    transitions with history rows, no-ops, refusals, conflicts, customers discovered from webhooks.
    """

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
        if self.rng.random() < 0.03:
            pcid, old, event_type, new = f"cus_new_{phase}{n:08d}", None, "customer.created", "PENDING"
            if self.rng.random() < 0.5:
                event_type, new, old = "customer.status_changed", "PROCESSING", "PENDING"
        else:
            pcid = self.rng.choice(self.pcids)
            old = self.statuses[pcid]
            event_type, new = self._next_status(old)
            self.statuses[pcid] = new
        updated_at = self.start + timedelta(milliseconds=n)  # strictly increasing: every content is unique
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


def write_pool(feed: Feed, phase: str, count: int, threads: int, prefix: Path) -> None:
    """``count`` signed requests, dealt round-robin into one file per wrk thread (see bench/webhook.lua)."""
    timestamp = str(int(time.time()))
    key = SECRET.encode()
    head = timestamp.encode() + b"."
    files = [open(f"{prefix}.{i + 1}", "wb") for i in range(threads)]  # noqa: SIM115
    try:
        for n in range(count):
            body = feed.event(phase)
            signature = hmac.new(key, head + body, hashlib.sha256).hexdigest()
            files[n % threads].write(f"{timestamp}\t{signature}\t".encode() + body + b"\n")
    finally:
        for handle in files:
            handle.close()


# --- processes --------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
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
        return f"http://127.0.0.1:{self.port}"

    def start(self, workdir: Path) -> None:
        self.log = workdir / f"{self.name}.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([*self.command, "--port", str(self.port)], env=self.env, cwd=ROOT,
                                            stdout=log, stderr=subprocess.STDOUT)
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

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Load:
    """What wrk saw."""

    completed: int
    sent: int
    ok: int
    non_2xx: int
    codes: str
    socket_errors: int
    wrapped: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds used during the run, by process group

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def in_flight(self) -> int:
        return max(self.sent - self.completed, 0)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, prefix: Path, seconds: float, connections: int, threads: int,
            watch: dict[str, list[int]] | None = None) -> Load:
    """Run wrk; ``watch`` names groups of processes whose CPU use over the run is recorded (and wrk's own)."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
               "-s", str(HERE / "webhook.lua"), url + PATH, "--", str(prefix), PATH]
    watch = watch or {}
    before = {name: cpu_seconds(pids) for name, pids in watch.items()}
    children = os.times()
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=seconds + 600)
    after = os.times()
    cpu = {name: cpu_seconds(pids) - before[name] for name, pids in watch.items()}
    cpu["wrk"] = (after.children_user + after.children_system) - (children.children_user + children.children_system)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    return Load(
        completed=data["completed"], sent=data["sent"], ok=data["ok"], non_2xx=data["non_2xx"],
        codes=data["codes"].strip(), wrapped=data["wrapped"],
        socket_errors=data["connect_errors"] + data["read_errors"] + data["write_errors"] + data["timeouts"],
        seconds=data["duration_us"] / 1e6, p50_ms=data["p50_us"] / 1000, p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000, max_ms=data["max_us"] / 1000, cpu=cpu,
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


def upgrade(database_url: str) -> None:
    env = clean_env(TRACKER_DATABASE_URL=database_url, TRACKER_LOG_LEVEL="warning")
    done = subprocess.run([sys.executable, "-m", "tracker.cli", "db", "upgrade"], env=env, cwd=ROOT,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"tracker db upgrade failed:\n{done.stdout}\n{done.stderr}")


def seed_database(database_url: str, count: int, past_events: int, rng: random.Random) -> dict[str, str]:
    """What a service that has been running for a while holds: ``count`` known Blaaiz customers in a mix of
    states, and an inbox of ``past_events`` earlier deliveries for them, with planner statistics gathered.
    Returns each customer's current provider status."""
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
                    inbox.append({
                        "provider": "blaaiz", "event_id": body["event_id"],
                        "fingerprint": hashlib.sha256(json.dumps(body).encode()).hexdigest(),
                        "event_type": body["event_type"], "provider_customer_id": pcid, "customer_id": ids[pcid],
                        "provider_status": status, "provider_time": at, "headers": None,
                        "body": json.dumps(body).encode(), "received_at": at, "processed_at": at,
                        "outcome": "accepted" if n % 3 else "ignored", "reason": None, "duplicate_of": None,
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


@dataclass
class Stored:
    stored: int  # first deliveries (duplicate_of IS NULL) of this phase
    duplicates: int
    applied: int
    outcomes: dict[str, int]
    apply_p50_ms: float
    apply_p99_ms: float
    apply_max_ms: float


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]  # nearest rank


def count_stored(database_url: str, phase: str) -> Stored:
    from sqlalchemy import func, select

    from tracker.db.engine import make_engine
    from tracker.db.tables import inbound_events as ev

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            of_phase = ev.c.event_id.like(f"evt_{phase}_%")
            outcomes = {row.outcome: row.n for row in conn.execute(
                select(ev.c.outcome, func.count().label("n")).where(of_phase, ev.c.duplicate_of.is_(None))
                .group_by(ev.c.outcome))}
            duplicates = conn.execute(select(func.count()).select_from(ev).where(
                of_phase, ev.c.duplicate_of.is_not(None))).scalar_one()
            times = conn.execute(select(ev.c.received_at, ev.c.processed_at, ev.c.outcome).where(
                of_phase, ev.c.duplicate_of.is_(None))).all()
    finally:
        engine.dispose()
    lags = [(processed - received).total_seconds() * 1000 for received, processed, outcome in times
            if processed is not None and outcome not in ("error", "rejected")]
    return Stored(stored=sum(outcomes.values()), duplicates=int(duplicates), applied=len(lags), outcomes=outcomes,
                  apply_p50_ms=percentile(lags, 0.50), apply_p99_ms=percentile(lags, 0.99),
                  apply_max_ms=max(lags, default=0.0))


def batch_sizes(metrics: str) -> str:
    total = count = 0.0
    for line in metrics.splitlines():
        if line.startswith("tracker_ingest_batch_size_sum"):
            total = float(line.split()[-1])
        elif line.startswith("tracker_ingest_batch_size_count"):
            count = float(line.split()[-1])
    return f"{count:.0f} commits, {total / count:.1f} deliveries per commit" if count else "no batch metrics"


# --- one backend ------------------------------------------------------------------------------------------

@dataclass
class Row:
    target: str
    load: Load
    ratio: float | None = None
    stored: Stored | None = None
    warmup_problem: str | None = None
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def judge(self, connections: int) -> None:
        load, stored = self.load, self.stored
        assert stored is not None
        assert self.ratio is not None
        if load.wrapped:
            self.failures.append(f"INVALID: the request pool ran out ({load.wrapped} repeats were sent)")
        if self.ratio < TARGET_RATIO:
            self.failures.append(f"throughput {self.ratio:.2f} of bare < {TARGET_RATIO}")
        if load.p99_ms > TARGET_P99_MS:
            self.failures.append(f"p99 {load.p99_ms:.1f} ms > {TARGET_P99_MS:g} ms")
        if load.non_2xx:
            self.failures.append(f"{load.non_2xx} non-2xx answers (status {load.codes})")
        if load.socket_errors:
            self.failures.append(f"{load.socket_errors} socket errors or timeouts")
        if stored.stored < load.ok:
            self.failures.append(f"{load.ok - stored.stored} acknowledged events are not stored")
        if stored.stored > load.ok + load.in_flight + load.non_2xx:
            self.failures.append(f"stored {stored.stored} > acked {load.ok} + in flight {load.in_flight}: "
                                 "wrk's counts do not add up")
        if stored.duplicates:
            self.failures.append(f"{stored.duplicates} unique events were stored as duplicates")
        if stored.applied < stored.stored:
            self.failures.append(f"{stored.stored - stored.applied} stored events were not applied")
        if stored.apply_p99_ms > TARGET_APPLY_P99_MS:
            self.failures.append(f"apply p99 {stored.apply_p99_ms:.1f} ms > {TARGET_APPLY_P99_MS:g} ms")
        if self.warmup_problem:
            self.failures.append(f"warm-up: {self.warmup_problem}")


def warm_and_measure(server: Server, workdir: Path, feed: Feed, args: argparse.Namespace, expected_rps: float,
                     database_pids: Callable[[], list[int]] | None = None) -> tuple[Load | None, Load]:
    """The warm-up, then the measured run, each with requests of its own (event ids ``evt_w_*``, ``evt_m_*``).
    The measured pool is sized from the warm-up's rate (three times it; the bare rate caps it), so that no
    request has to be sent twice; a run that still runs out is reported invalid."""
    warm_load = None
    if args.warmup:
        warm = workdir / f"{server.name}-warm"
        write_pool(feed, "w", int(expected_rps * args.warmup * 1.5) + 2000, args.threads, warm)
        warm_load = run_wrk(server.url, warm, args.warmup, args.connections, args.threads)
        expected_rps = min(expected_rps, 3 * warm_load.rps)
    measured = workdir / f"{server.name}-measured"
    write_pool(feed, "m", int(expected_rps * args.duration * 1.5) + 5000, args.threads, measured)
    time.sleep(0.5)
    assert server.process is not None
    watch = {"server": [server.process.pid]}
    if database_pids is not None:
        watch["database"] = database_pids()
    load = run_wrk(server.url, measured, args.duration, args.connections, args.threads, watch)
    return warm_load, load


def postgres_backends(database_url: str) -> list[int]:
    """The server processes serving connections to this database (the tracker's writers among them)."""
    import psycopg

    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        return [row[0] for row in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,))]


def cpu_note(load: Load) -> str:
    parts = []
    for name, seconds in load.cpu.items():
        label = "wrk (with loading its requests)" if name == "wrk" else name
        parts.append(f"{label} {seconds / load.seconds:.2f} cores = {seconds / max(load.ok, 1) * 1e6:.0f} us")
    return "CPU per acknowledged request: " + ", ".join(parts)


def run_bare(workdir: Path, args: argparse.Namespace, label: str) -> Row:
    server = Server(f"bare-{label}", [sys.executable, str(HERE / "bare_app.py")], clean_env())
    rng = random.Random(7)
    feed = Feed({f"cus_{n:06d}": "PENDING" for n in range(args.customers)}, rng, datetime.now(UTC))
    server.start(workdir)
    try:
        impl = server.implementation()
        # The pool may wrap here: the bare endpoint does not care whether it saw a body before.
        _, load = warm_and_measure(server, workdir, feed, args, expected_rps=8000)
    finally:
        server.stop()
    row = Row(f"bare ({label})", load, ratio=1.0)
    row.notes += [f"server: {impl}", cpu_note(load)]
    return row


def run_tracker(backend: str, workdir: Path, args: argparse.Namespace, bare: Row) -> Row:
    rng = random.Random(11)
    pg_url = None
    if backend == "postgres":
        pg_url = create_pg_database(args.postgres_url)
        database_url = pg_url
    else:
        database_url = f"sqlite:///{workdir / 'tracker-bench.db'}"
    try:
        upgrade(database_url)
        statuses = seed_database(database_url, args.customers, args.past_events, rng)
        settle(database_url)
        feed = Feed(statuses, rng, datetime.now(UTC) - timedelta(days=1))
        env = clean_env(TRACKER_DATABASE_URL=database_url, TRACKER_BLAAIZ_WEBHOOK_SECRETS=SECRET,
                        TRACKER_LOG_LEVEL="warning")
        server = Server(f"tracker-{backend}", [sys.executable, "-m", "tracker.cli", "serve", "--no-worker"], env)
        server.start(workdir)
        try:
            impl = server.implementation()
            warm, load = warm_and_measure(server, workdir, feed, args, expected_rps=bare.load.rps,
                                          database_pids=(lambda: postgres_backends(database_url))
                                          if backend == "postgres" else None)
            time.sleep(1.0)  # let the requests cut off at the end finish their commit
            batches = batch_sizes(server.metrics())
        finally:
            server.stop()
        row = Row(f"tracker-{backend}", load, ratio=load.rps / bare.load.rps if bare.load.rps else 0.0)
        row.stored = count_stored(database_url, "m")
        if warm is not None:
            warm_stored = count_stored(database_url, "w")
            if warm_stored.stored < warm.ok or warm.non_2xx or warm.wrapped:
                row.warmup_problem = (f"acked {warm.ok}, stored {warm_stored.stored}, non-2xx {warm.non_2xx}, "
                                      f"pool repeats {warm.wrapped}")
        row.judge(args.connections)
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(row.stored.outcomes.items()))
        row.notes += [f"server: {impl}", batches, cpu_note(load), f"outcomes: {outcomes}",
                      f"sent {load.sent}, completed {load.completed}, in flight at stop {load.in_flight}"]
        if args.keep and backend == "postgres":
            row.notes.append(f"database kept: {database_url}")
        return row
    finally:
        if pg_url is not None and not args.keep:
            drop_pg_database(args.postgres_url, pg_url)


# --- output -----------------------------------------------------------------------------------------------

def table(rows: list[Row], args: argparse.Namespace) -> str:
    head = ("target", "req/s", "ratio", "p50 ms", "p99 ms", "non-2xx", "acked", "stored", "applied",
            "apply p99", "result")
    lines = [head]
    for row in rows:
        load, stored = row.load, row.stored
        lines.append((
            row.target, f"{load.rps:.0f}", f"{row.ratio:.2f}" if row.ratio is not None else "-",
            f"{load.p50_ms:.2f}", f"{load.p99_ms:.2f}", str(load.non_2xx + load.socket_errors), str(load.ok),
            str(stored.stored) if stored else "-", str(stored.applied) if stored else "-",
            f"{stored.apply_p99_ms:.1f} ms" if stored else "-",
            ("FAIL" if row.failures else "PASS") if stored else "ref",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for n, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(line[1:], widths[1:],
                                                                                         strict=True)]
        out.append("  ".join(cells))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=15, help="measured seconds per target (default 15)")
    parser.add_argument("--warmup", type=float, default=3, help="warm-up seconds per target (default 3; 0: none)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1, see above)")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--postgres-url", default=PG_ADMIN,
                        help="admin connection; a database bench_ingest_<random> is created there and dropped "
                             f"(default {PG_ADMIN})")
    parser.add_argument("--customers", type=int, default=10_000, help="customers seeded (default 10000)")
    parser.add_argument("--past-events", type=int, default=100_000,
                        help="earlier deliveries already in the inbox (default 100000)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and the databases")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench/ingest: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads")
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    workdir = Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    print(f"bench/ingest: {args.connections} connections, wrk -t{args.threads}, warm-up {args.warmup:g} s, "
          f"measured {args.duration:g} s per target, {args.customers} customers, {os.cpu_count()} CPUs",
          flush=True)
    rows: list[Row] = []
    try:
        for backend in backends:
            # The bare reference is measured next to each tracker run, so both see the same machine load.
            print(f"  bare endpoint ({backend} pass) ...", flush=True)
            bare = run_bare(workdir, args, backend)
            rows.append(bare)
            print(f"  tracker on {backend} ...", flush=True)
            rows.append(run_tracker(backend, workdir, args, bare))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory kept: {workdir}")
    print()
    print(table(rows, args))
    print()
    for row in rows:
        for note in row.notes:
            print(f"{row.target}: {note}")
        for failure in row.failures:
            print(f"{row.target}: FAIL {failure}")
    print()
    print(f"targets: ratio >= {TARGET_RATIO} of bare, p99 <= {TARGET_P99_MS:g} ms, zero non-2xx, stored >= acked, "
          f"all applied, apply p99 <= {TARGET_APPLY_P99_MS:g} ms.")
    print("acked = 2xx answers wrk received; stored = inbox rows of the measured run (duplicate_of IS NULL), which "
          "may exceed acked by the requests in flight when wrk stopped; apply p99 = processed_at - received_at, and "
          "processed_at is committed in the same transaction as the event, before the 2xx is sent.")
    failed = any(row.failures for row in rows)
    print("RESULT:", "FAIL" if failed else "PASS")
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
