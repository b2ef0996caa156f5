"""bench/escalation: issue #4's escalation targets at scale, on SQLite and on PostgreSQL.

    "1,000,000 customers of which 200,000 pending with spread-out submission times: the due query per tick
    under 20 ms, and crossing-to-alert latency p99 under 2 s while crossings happen at 100 a second."

For each backend it creates a fresh database (a SQLite file in a temporary directory; a PostgreSQL database
``tracker_bench_escalation``, dropped at the end), applies the migrations with ``tracker db upgrade`` and
bulk-loads ``--customers`` customers with bench/read's loader (multi-row INSERTs on SQLite, COPY on
PostgreSQL; the customer indexes, ``ix_customers_deadline`` among them, are built after the load from the
migrations' definitions; PostgreSQL then gets the VACUUM ANALYZE autovacuum would soon run).

``--pending`` of them are ``pending``. Their ``tier``, ``deadline_at`` and ``deadline_tier`` are what the app
would hold: the tier reached at load time (``tracker.domain.escalation.tier_at``) and the next deadline from
``tracker.transitions.plans.deadline``, under the default policy (overdue 2 h, critical 5 h, Blaaiz business 5
business days). ``pending_since`` is spread over the past week (45 % under 2 h, 25 % between 2 h and 5 h,
30 % older), redrawn for the few (about 10 %) whose next deadline would fall within 20 minutes + twice the window
of the load: nothing of the background is due during the run. The others are verified, rejected, awaiting
documents or needing action (no deadline). ``next_poll_at`` stays empty: nothing is polled in this run (see below). The
alerts and notifications tables start empty (the earlier alerts of the customers already escalated are not
loaded).

The stream: RATE x WINDOW of the pending customers (6,000 by default: 100 a second for 60 s) cross a
threshold during the measurement window, 4 in 5 the 2 h ``overdue`` one (tier ``none`` until then), 1 in 5 the
5 h ``critical`` one (already ``overdue``), one every 1/RATE s, in a random order over the table and the
providers (Blaaiz ones are individuals: Blaaiz business customers have no hour-based tiers). They are loaded
with their crossings half that quiet time ahead; once the worker has ticked idle for ``--idle`` seconds, their
``pending_since`` (and with it ``deadline_at``, ``updated_at``) is moved, in one transaction, so the first
crosses ``--lead`` seconds (plus 0.2 s per thousand crossings, for the moving itself) later.

The worker is the real one, in its own process: ``tracker worker`` (``tracker.cli.main(["worker"])``) with the
default 1 s tick, launched through ``bench/escalation.py --worker-probe FILE``, which only wraps
``tracker.db.queries.claim_deadlines`` and ``Escalator._settle`` to append each call's wall time, duration and
rows to FILE: the due query is timed where the Escalator runs it, tick by tick, and so is the settling of what
it claimed (25 customers a transaction, a savepoint each; on PostgreSQL up to 4 transactions at once). No
provider credentials are given, so nothing is polled and the Escalator's check before an alert has no plan
(no network in the measurement); the alert channel is the default ``log`` one. ``TRACKER_INCIDENT_THRESHOLD``
is 1,000,000 by default, so the per-customer alerts are not folded into provider incidents and each gets its
notice in the outbox (the heavier path); ``--incident-threshold 10`` (the default of the setting) measures
the folding path.

Figures (PASS/FAIL on the issue's targets, with each figure's ratio to its target):

1. The due query (``queries.claim_deadlines``, the Escalator's claim: pick the due rows through
   ``ix_customers_deadline``, write their lease, return them), before the worker starts, in transactions
   rolled back: ``--reps`` times with nothing due, and with one tick's worth due (RATE rows, at the stream's
   first second) ``--reps`` times on SQLite, ``--due-reps`` times after a VACUUM on PostgreSQL (there each
   rolled-back claim leaves dead row versions that the next ones visit). EXPLAIN (QUERY PLAN on SQLite,
   ANALYZE on PostgreSQL) of the statements it sends is printed. Then in the worker: every tick's claim, idle
   ticks and ticks during the stream apart. Target: p99 under 20 ms, for each.
2. Crossing-to-alert latency: ``alerts.opened_at`` (the worker's clock when it raised the alert, in the
   transaction that commits it) minus the crossing moment (``pending_since`` + threshold), for every crossing;
   and the same up to the moment the bench saw the alert committed (it polls the alerts table every 50 ms;
   the figure includes up to that). Target: p99 under 2 s, for both.
3. Exactly once: every crossing raised one alert of its tier, none before its crossing, none twice, no alert
   for anyone else, and each stream customer's row ends at its new tier with its next deadline and no lease.

Also shown, without a target: the Escalator's settling time per tick (how much of the 1 s tick it takes: past
1 s, APScheduler skips ticks and the latency jumps by whole seconds) and the longest interval between claims;
the notices the outbox delivered to the log channel by the end, and their latency; the worker's CPU time
during the window; the CPU pressure (Linux PSI) and load average. ``--py-spy FILE`` records the worker with
py-spy during the window. The exit status is 0 when every target is met.

    bench/escalation                                 # both backends, 1,000,000 customers, 60 s at 100/s
    bench/escalation --quick --backend sqlite        # 100,000 customers, 20,000 pending, 15 s window
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PG_ADMIN = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_DATABASE = "tracker_bench_escalation"

DUE_P99_TARGET_MS = 20.0
LATENCY_P99_TARGET_S = 2.0
HOUR = 3600.0
DAY = 86400.0
WATCH_PERIOD = 0.05


def log(message: str) -> None:
    print(f"[bench/escalation {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]  # nearest rank


# --- the worker, timed in place ---------------------------------------------------------------------------

def run_worker(probe: str) -> int:
    """``tracker worker``, with ``queries.claim_deadlines`` timed (lines ``claim <wall> <ms> <rows>`` in
    ``probe``) and the Escalator's settling of each claim too (``settle <wall> <ms> <rows>``)."""
    from tracker import cli
    from tracker.db import queries
    from tracker.escalation import Escalator

    original = queries.claim_deadlines
    settle = Escalator._settle
    out = open(probe, "a", buffering=1)  # noqa: SIM115 (open for the life of the process)

    def timed(conn: Any, now: datetime, limit: int, owner: str, lease_until: datetime) -> Any:
        started = time.perf_counter()
        rows = original(conn, now, limit, owner, lease_until)
        elapsed = time.perf_counter() - started
        out.write(f"claim {time.time():.6f} {elapsed * 1000:.4f} {len(rows)}\n")
        return rows

    def timed_settle(self: Any, rows: Any, reports: Any) -> None:
        started = time.perf_counter()
        settle(self, rows, reports)
        out.write(f"settle {time.time():.6f} {(time.perf_counter() - started) * 1000:.4f} {len(rows)}\n")

    queries.claim_deadlines = timed  # type: ignore[assignment]
    Escalator._settle = timed_settle  # type: ignore[method-assign]
    return cli.main(["worker"])


# --- the data ---------------------------------------------------------------------------------------------

@dataclass
class Crossing:
    customer_id: int
    index: int
    provider: str
    customer_type: str
    kind: str  # the tier it crosses: overdue or critical
    attempts: int
    version: int
    at: datetime  # the crossing moment


@dataclass
class Plan:
    now: datetime
    quiet: timedelta  # no background deadline falls within this long after ``now``
    stream: dict[int, Crossing] = field(default_factory=dict)
    pending: int = 0
    with_deadline: int = 0
    redrawn: int = 0


def effects_and_policy() -> Any:
    """The default escalation policy and the app's deadline function (``policy``, ``deadline``)."""
    from types import SimpleNamespace

    from tracker.bootstrap import escalation_policy
    from tracker.settings import Settings
    from tracker.transitions.plans import deadline

    policy = escalation_policy(Settings())
    return SimpleNamespace(policy=policy, deadline=lambda provider, customer_type, since, tier: deadline(
        policy, provider, customer_type, since, tier))


def generate(n: int, pending: int, stream: int, rate: float, plan: Plan, effects: Any, seed: int
             ) -> Iterator[tuple[Any, ...]]:
    """Rows in bench/read's COLUMNS order plus deadline_at, deadline_tier; timestamps as epoch seconds."""
    import read as read_bench

    from tracker.domain.escalation import Tier, tier_at

    order = [Tier.NONE, Tier.OVERDUE, Tier.CRITICAL]
    rng = random.Random(seed)
    now = plan.now
    now_ts = now.timestamp()
    pending_ids = rng.sample(range(1, n + 1), pending)
    stream_index = {cid: k for k, cid in enumerate(pending_ids[:stream])}
    pending_set = set(pending_ids)
    others = [(s, w) for s, w in read_bench.STATES if s != "pending"]
    total = sum(w for _, w in others)
    others_table = tuple((s, w / total) for s, w in others)
    provisional = now + plan.quiet / 2
    start = now_ts - 730 * DAY
    span = 730 * DAY
    ref_space = max(1, int(n * 0.85))

    def ts(value: datetime | None) -> float | None:
        return None if value is None else value.timestamp()

    for i in range(1, n + 1):
        provider = read_bench._pick(rng, read_bench.PROVIDERS)
        business = rng.random() < 0.12
        created = start + span * (i - 1) / n + rng.random() * 60
        pending_since = decided_at = last_provider_time = deadline_at = None
        deadline_tier = rejection_reason = None
        tier = "none"
        attempts = rejections = 0
        if i in pending_set:
            state = "pending"
            attempts = 1 + (rng.random() < 0.1)
            if i in stream_index:
                k = stream_index[i]
                business = business and provider != "blaaiz"  # Blaaiz KYB has no hour-based tiers
                customer_type = "business" if business else "individual"
                thresholds = effects.policy.thresholds(provider, customer_type)
                kind = Tier.CRITICAL if k % 5 == 4 else Tier.OVERDUE
                at = provisional + timedelta(microseconds=round(k * 1e6 / rate))
                since = at - (thresholds.critical if kind is Tier.CRITICAL else thresholds.overdue).duration
                reached = tier_at(thresholds, since, now)
                assert reached is (Tier.OVERDUE if kind is Tier.CRITICAL else Tier.NONE), (i, reached)
                deadline = effects.deadline(provider, customer_type, since, reached)
                assert deadline == {"deadline_at": at, "deadline_tier": kind.value}, (i, deadline)
            else:
                customer_type = "business" if business else "individual"
                thresholds = effects.policy.thresholds(provider, customer_type)
                for _ in range(1000):
                    r = rng.random()
                    if r < 0.45:
                        age = rng.random() * 2 * HOUR
                    elif r < 0.70:
                        age = 2 * HOUR + rng.random() * 3 * HOUR
                    else:
                        age = 5 * HOUR * math.exp(rng.random() * math.log(7 * DAY / (5 * HOUR)))
                    since = datetime.fromtimestamp(round(now_ts - age, 6), UTC)
                    reached = tier_at(thresholds, since, now)
                    deadline = effects.deadline(provider, customer_type, since, reached)
                    if deadline["deadline_at"] is None or deadline["deadline_at"] >= now + plan.quiet:
                        break
                    plan.redrawn += 1
            version = 2 + attempts + order.index(reached)
            updated = since
            for reached_tier, threshold in thresholds.tiers():
                if order.index(reached_tier) <= order.index(reached):
                    updated = threshold.due(since)
            tier = reached.value
            pending_since = since.timestamp()
            deadline_at = ts(deadline["deadline_at"])
            deadline_tier = deadline["deadline_tier"]
            created = min(created, pending_since - rng.random() * DAY)
            updated_ts = updated.timestamp()
            if provider != "blaaiz":
                last_provider_time = pending_since
            plan.pending += 1
            plan.with_deadline += deadline_at is not None
            if i in stream_index:
                plan.stream[i] = Crossing(i, stream_index[i], provider, customer_type, kind.value, attempts,
                                          version, at)
        else:
            customer_type = "business" if business else "individual"
            state = read_bench._pick(rng, others_table)
            if state in ("verified", "rejected"):
                attempts = 1 + (rng.random() < 0.15)
                decided_at = min(created + HOUR + rng.random() * 5 * DAY, now_ts - 1)
                last_provider_time = decided_at - rng.random() * 5
                updated_ts = decided_at
                version = 2 + 2 * attempts
                if state == "rejected":
                    rejections = attempts
                    rejection_reason = "The document is blurred; upload a sharper picture of the whole page"
            elif state == "needs_action":
                attempts = 1
                updated_ts = min(created + HOUR + rng.random() * 10 * DAY, now_ts - 1)
                last_provider_time = updated_ts
                version = 3
            else:  # awaiting_documents
                updated_ts = min(created + rng.random() * 2 * DAY, now_ts - 1)
                version = 1 + (rng.random() < 0.3)
        scrambled = (i * 2654435761) % (1 << 40)
        if provider == "blaaiz":
            pcid = f"cus_{scrambled:010x}"
        elif provider == "connectfi":
            pcid = f"cf-{scrambled:010x}-{i % 97:02d}"
        else:
            pcid = f"{scrambled:013d}"
        reference = f"usr_{rng.randrange(ref_space):08d}" if rng.random() < 0.9 else None
        yield (i, provider, pcid, customer_type, reference, f"app_{i:08d}" if provider == "connectfi" else None,
               state, read_bench.PROVIDER_STATUS[provider][state], tier, pending_since, decided_at,
               last_provider_time, rejection_reason, attempts, rejections, version,
               "webhook" if rng.random() < 0.2 else "api", None, created, updated_ts, deadline_at, deadline_tier)


def load(backend: str, url: str, sqlite_path: Path | None, args: argparse.Namespace, plan: Plan, effects: Any
         ) -> tuple[float, float]:
    import read as read_bench

    columns = (*read_bench.COLUMNS, "deadline_at", "deadline_tier")
    timestamps = (*read_bench.TIMESTAMP_COLUMNS, columns.index("deadline_at"))
    rows = generate(args.customers, args.pending, args.stream, args.rate, plan, effects, args.seed)
    if backend == "sqlite":
        assert sqlite_path is not None
        return read_bench.load_sqlite(str(sqlite_path), columns, rows, timestamps)  # type: ignore[no-any-return]
    return read_bench.load_postgres(url, columns, rows, timestamps)  # type: ignore[no-any-return]


def place_stream(engine: Any, plan: Plan, effects: Any, first: datetime, rate: float) -> None:
    """Move the stream so that crossing k happens at ``first + k / rate``, as if each had entered pending
    a threshold earlier: pending_since, deadline_at, updated_at (and last_provider_time) as the app keeps them."""
    from tracker.db import queries
    from tracker.db.engine import write_transaction
    from tracker.domain.escalation import Tier, tier_at

    now = datetime.now(UTC)
    changes = []
    for crossing in plan.stream.values():
        at = first + timedelta(microseconds=round(crossing.index * 1e6 / rate))
        thresholds = effects.policy.thresholds(crossing.provider, crossing.customer_type)
        since = at - (thresholds.critical if crossing.kind == "critical" else thresholds.overdue).duration
        reached = tier_at(thresholds, since, now)
        assert reached is (Tier.OVERDUE if crossing.kind == "critical" else Tier.NONE)
        deadline = effects.deadline(crossing.provider, crossing.customer_type, since, reached)
        assert deadline == {"deadline_at": at, "deadline_tier": crossing.kind}
        changes.append({"_id": crossing.customer_id, "_version": crossing.version, "pending_since": since,
                        "updated_at": since if reached is Tier.NONE else thresholds.overdue.due(since),
                        "last_provider_time": since if crossing.provider != "blaaiz" else None, **deadline})
        crossing.at = at
    with write_transaction(engine) as conn:
        matched = queries.update_customers(conn, changes)
    if matched != len(changes):
        raise SystemExit(f"bench/escalation: placing the stream matched {matched} of {len(changes)} customers")


# --- the due query, from the bench --------------------------------------------------------------------------

def time_claims(engine: Any, now: datetime, reps: int, batch: int, lease: timedelta) -> tuple[list[float], int]:
    """``claim_deadlines`` as the Escalator calls it, in a transaction rolled back each time: durations (ms)."""
    from tracker.db import queries
    from tracker.db.engine import write_options

    durations = []
    rows = 0
    with engine.connect().execution_options(**write_options(engine)) as conn:
        for _ in range(reps):
            transaction = conn.begin()
            started = time.perf_counter()
            claimed = queries.claim_deadlines(conn, now, batch, "bench", now + lease)
            durations.append((time.perf_counter() - started) * 1000)
            transaction.rollback()
            rows = len(claimed)
    return durations, rows


def explain(engine: Any, now: datetime, batch: int, lease: timedelta) -> list[str]:
    """The plans of the statements ``claim_deadlines`` sends (captured as sent), in a rolled-back transaction."""
    from sqlalchemy import event

    from tracker.db import queries
    from tracker.db.engine import write_options

    sent: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if not statement.lstrip().upper().startswith("EXPLAIN"):
            sent.append((statement, parameters))

    out: list[str] = []
    with engine.connect().execution_options(**write_options(engine)) as conn:
        transaction = conn.begin()
        event.listen(engine, "before_cursor_execute", capture)
        try:
            claimed = queries.claim_deadlines(conn, now, batch, "bench", now + lease)
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        transaction.rollback()
        for number, (statement, parameters) in enumerate(sent, 1):
            label = f"statement {number} of {len(sent)}"
            transaction = conn.begin()
            prefix = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN (ANALYZE, BUFFERS) "
            result = conn.exec_driver_sql(prefix + statement, parameters).all()
            transaction.rollback()
            first_line = " ".join(statement.split())[:110]
            out.append(f"    -- {label}: {first_line}{' ...' if len(first_line) >= 110 else ''}")
            for row in result:
                out.append("       " + (str(row[-1]) if engine.dialect.name == "sqlite" else str(row[0])))
    out.insert(0, f"  claim_deadlines at {now.isoformat()} (limit {batch}): {len(claimed)} rows due")
    return out


def vacuum(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM customers")


# --- watching the alerts appear -----------------------------------------------------------------------------

LOOKBACK = 2000


class Watcher(threading.Thread):
    """Polls the alerts table every WATCH_PERIOD: when each alert was first seen committed. Once a second it
    also notes the machine's CPU and IO pressure and the worker's CPU time (to tell a slow tick's cause)."""

    def __init__(self, url: str, worker_pid: int) -> None:
        super().__init__(daemon=True)
        from tracker.db.engine import make_engine

        self.engine = make_engine(url, pool_size=1)
        self.worker_pid = worker_pid
        self.seen: dict[int, float] = {}
        self.samples: list[tuple[float, float | None, float | None, float]] = []  # (time, cpu stall, io stall, cpu)
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        from sqlalchemy import select

        from tracker.db.tables import alerts

        last = 0
        try:
            with self.engine.connect() as conn:
                while not self.done.is_set():
                    # Ids are handed out in order but parallel transactions commit out of order: look back
                    # LOOKBACK ids below the largest seen (seconds of alerts at the bench's rate).
                    ids = conn.execute(select(alerts.c.id).where(alerts.c.id > last - LOOKBACK)
                                       .order_by(alerts.c.id)).scalars().all()
                    conn.rollback()
                    seen = time.time()
                    for ident in ids:
                        self.seen.setdefault(ident, seen)
                        last = max(last, ident)
                    if not self.samples or seen - self.samples[-1][0] >= 1.0:
                        self.samples.append((seen, cpu_stall(), cpu_stall("io"), cpu_seconds(self.worker_pid)))
                    self.done.wait(WATCH_PERIOD)
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            self.engine.dispose()

    def stop(self) -> None:
        self.done.set()
        self.join(10)


# --- processes ------------------------------------------------------------------------------------------------

def base_env() -> dict[str, str]:
    """The caller's environment without its TRACKER_ variables (the tracker refuses names it does not know,
    and no provider credentials must leak in)."""
    return {name: value for name, value in os.environ.items() if not name.startswith("TRACKER_")}


def cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_stall(resource: str = "cpu") -> float | None:
    """Seconds so far during which some task waited for a CPU (or IO: Linux PSI)."""
    try:
        line = Path(f"/proc/pressure/{resource}").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    fields = dict(part.split("=", 1) for part in line.split()[1:])
    return int(fields["total"]) / 1e6 if "total" in fields else None


def pressure(samples: list[tuple[float, float | None, float | None, float]], spans: list[tuple[float, float]],
             start: float, end: float) -> str:
    """CPU/IO stall (PSI some) and the worker's CPU use, per second, inside ``spans`` and in the rest of the window."""
    inside = [0.0, 0.0, 0.0, 0.0]  # seconds, cpu stall, io stall, worker cpu
    outside = [0.0, 0.0, 0.0, 0.0]
    for (t0, c0, i0, w0), (t1, c1, i1, w1) in itertools.pairwise(samples):
        if t0 < start or t1 > end or c0 is None or c1 is None or i0 is None or i1 is None:
            continue
        middle = (t0 + t1) / 2
        into = inside if any(a <= middle <= b for a, b in spans) else outside
        for k, value in enumerate((t1 - t0, c1 - c0, i1 - i0, w1 - w0)):
            into[k] += value

    def share(acc: list[float]) -> str:
        if not acc[0]:
            return "-"
        return (f"CPU stall {acc[1] / acc[0]:.0%}, IO stall {acc[2] / acc[0]:.0%}, worker CPU "
                f"{acc[3] / acc[0]:.0%} of a core")

    return f"during them: {share(inside)}; rest of the window: {share(outside)}"


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n  ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def read_probe(path: Path, kind: str = "claim") -> list[tuple[float, float, int]]:
    samples = []
    try:
        text = path.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == kind:
            samples.append((float(parts[1]), float(parts[2]), int(parts[3])))
    return samples


# --- one backend ----------------------------------------------------------------------------------------------

@dataclass
class Line:
    backend: str
    check: str
    figure: str
    target: str = ""
    ratio: str = ""
    verdict: str = ""


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def spread(values: list[float], unit: str, scale: float = 1.0, digits: int = 1) -> str:
    if not values:
        return "no samples"
    p50, p99 = percentile(values, 0.5) * scale, percentile(values, 0.99) * scale
    return (f"p50 {p50:.{digits}f} {unit}  p99 {p99:.{digits}f} {unit}  max {max(values) * scale:.{digits}f} {unit}"
            f"  (n={len(values):,})")


def run_backend(backend: str, args: argparse.Namespace) -> tuple[list[Line], list[str], bool]:
    from sqlalchemy import select

    from tracker.db.engine import make_engine
    from tracker.db.tables import alerts, customers, notifications
    from tracker.escalation import Escalator
    from tracker.settings import Settings

    batch = Escalator.__init__.__kwdefaults__["batch"]  # the Escalator's claim limit (500)
    lease = Settings().poll_lease  # the lease bootstrap gives the Escalator
    workdir = Path(tempfile.mkdtemp(prefix="bench_escalation_"))
    pg_created = False
    worker: subprocess.Popen[bytes] | None = None
    watcher: Watcher | None = None
    engine = None
    lines: list[Line] = []
    plans: list[str] = []
    ok = True
    try:
        sqlite_path = None
        if backend == "sqlite":
            sqlite_path = workdir / "tracker.db"
            url = f"sqlite:///{sqlite_path}"
        else:
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')
            pg_created = True
            url = f"{PG_ADMIN.rsplit('/', 1)[0]}/{PG_DATABASE}"
        env = {**base_env(), "TRACKER_DATABASE_URL": url, "TRACKER_LOG_LEVEL": "warning",
               "TRACKER_INCIDENT_THRESHOLD": str(args.incident_threshold)}
        subprocess.run([sys.executable, "-m", "tracker.cli", "db", "upgrade"], env=env, cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)

        effects = effects_and_policy()
        plan = Plan(now=datetime.now(UTC), quiet=timedelta(minutes=20) + 2 * timedelta(seconds=args.window))
        log(f"{backend}: loading {args.customers:,} customers ({args.pending:,} pending, {args.stream:,} "
            "in the stream)")
        seconds, index_seconds = load(backend, url, sqlite_path, args, plan, effects)
        log(f"{backend}: loaded in {seconds:.1f} s (indexes {index_seconds:.1f} s); {plan.pending:,} pending, "
            f"{plan.with_deadline:,} with a deadline ({plan.redrawn:,} submission times redrawn out of the "
            "quiet time)")
        lines.append(Line(backend, "load", f"{args.customers:,} customers, {plan.pending:,} pending, "
                                           f"{plan.with_deadline:,} with a deadline: {seconds:.0f} s"))

        engine = make_engine(url)
        with engine.connect() as conn:
            due_now = conn.execute(select(customers.c.id).where(customers.c.deadline_at <= datetime.now(UTC))
                                   .limit(1)).first()
        if due_now is not None:
            raise SystemExit(f"bench/escalation: customer {due_now.id} is due before the run")

        # 1. the due query from the bench, rolled back, before the worker runs
        stream_start = min(c.at for c in plan.stream.values())
        cases = [("nothing due", datetime.now(UTC)), (f"one tick due ({args.rate:g} rows)",
                                                      stream_start + timedelta(seconds=1) - timedelta(microseconds=1))]
        plans.append(f"{backend}:")
        for _, at in cases:
            plans.extend(explain(engine, at, batch, lease))
        for number, (label, at) in enumerate(cases):
            reps = args.reps
            if number and backend == "postgres":
                # Each rolled-back claim leaves dead versions of the same rows, which the next repetitions visit
                # (a bitmap index scan does not mark them dead): start clean, and repeat less.
                vacuum(url)
                reps = args.due_reps
            time_claims(engine, at, 3, batch, lease)  # warm-up
            durations, rows = time_claims(engine, at, reps, batch, lease)
            p99 = percentile(durations, 0.99)
            passed = p99 < DUE_P99_TARGET_MS
            ok = ok and passed
            lines.append(Line(backend, f"due query, bench, rolled back: {label}, {rows} claimed",
                              spread(durations, "ms", digits=2), f"p99 < {DUE_P99_TARGET_MS:.0f} ms",
                              f"{p99 / DUE_P99_TARGET_MS:.2f}", verdict(passed)))
            log(f"{backend}: due query, {label}: {lines[-1].figure}")

        # 2. the worker
        probe = workdir / "claims.txt"
        worker_log = workdir / "worker.log"
        with worker_log.open("wb") as err:
            worker = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker-probe", str(probe)],
                                      env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 120
        while not read_probe(probe):
            if worker.poll() is not None:
                raise SystemExit(f"bench/escalation: the worker exited at start:\n  {tail(worker_log)}")
            if time.monotonic() > deadline:
                raise SystemExit("bench/escalation: the worker did not tick within 120 s")
            time.sleep(0.1)
        ready = time.time()
        log(f"{backend}: worker pid {worker.pid} ticking; idle for {args.idle:g} s")
        watcher = Watcher(url, worker.pid)
        watcher.start()
        time.sleep(args.idle)

        # Plus the placing itself (about 0.1 ms a row on PostgreSQL), which must end before the first crossing.
        first = datetime.fromtimestamp(round(time.time() + args.lead + args.stream / 5000, 3), UTC)
        if first > stream_start - timedelta(seconds=30) or \
                first + timedelta(seconds=args.window + 60) > plan.now + plan.quiet:
            raise SystemExit("bench/escalation: loading and measuring took so long that deadlines other than the "
                             "stream's would fall due during the window")
        placed = time.time()
        place_stream(engine, plan, effects, first, args.rate)
        log(f"{backend}: stream placed in {time.time() - placed:.2f} s: {args.stream:,} crossings from "
            f"{first.time().isoformat('milliseconds')} at {args.rate:g}/s")
        if time.time() > first.timestamp() - 0.5:
            raise SystemExit("bench/escalation: placing the stream ended too close to its first crossing; give a "
                             "longer --lead")
        last = max(c.at for c in plan.stream.values())
        stream_ids = set(plan.stream)
        if args.py_spy:
            spy_command = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            spy = subprocess.Popen([spy_command, "record", "--pid", str(worker.pid), "--nonblocking", "--rate", "100",
                                    "--format", "raw", "--output", args.py_spy,
                                    "--duration", str(round(last.timestamp() - time.time() + 2))],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            log(f"{backend}: py-spy pid {spy.pid} records the worker to {args.py_spy}")
        load_before = os.getloadavg()[0]
        stall_before = cpu_stall()
        cpu_before = cpu_seconds(worker.pid)
        window_start = first.timestamp()
        while time.time() < last.timestamp() + 1.0:
            time.sleep(0.2)
            if worker.poll() is not None:
                raise SystemExit(f"bench/escalation: the worker died during the window:\n  {tail(worker_log)}")
        cpu_window = cpu_seconds(worker.pid) - cpu_before
        stall_after = cpu_stall()
        window_seconds = time.time() - window_start
        load_after = os.getloadavg()[0]
        # wait for the stragglers (or give up after 30 s)
        give_up = time.time() + 30
        while time.time() < give_up:
            with engine.connect() as conn:
                raised = set(conn.execute(select(alerts.c.customer_id)).scalars())
            if len(raised & stream_ids) >= len(stream_ids):
                break
            time.sleep(0.5)
        time.sleep(2)  # a tick more: anything late or twice shows up
        probe_samples = read_probe(probe)
        settle_samples = read_probe(probe, "settle")
        watcher.stop()
        if watcher.error is not None:
            log(f"{backend}: the watcher failed: {watcher.error!r}")
            ok = False
        stop(worker)
        code = worker.returncode
        worker_tail = tail(worker_log)

        # 3. what happened
        with engine.connect() as conn:
            alert_rows = conn.execute(select(alerts.c.id, alerts.c.key, alerts.c.kind, alerts.c.customer_id,
                                             alerts.c.opened_at, alerts.c.incident_id)).all()
            notice_rows = conn.execute(select(notifications.c.alert_id, notifications.c.state,
                                              notifications.c.sent_at)).all()
            after = {row.id: row for row in conn.execute(
                select(customers.c.id, customers.c.tier, customers.c.pending_since, customers.c.deadline_at,
                       customers.c.deadline_tier, customers.c.deadline_lease_owner)
                .where(customers.c.id.in_(list(stream_ids))))}
        by_customer: dict[int, list[Any]] = {}
        for row in alert_rows:
            by_customer.setdefault(row.customer_id, []).append(row)
        latencies, visible, early, missing, twice, wrong, unseen = [], [], [], 0, 0, 0, 0
        for cid, crossing in plan.stream.items():
            found = by_customer.get(cid, [])
            if not found:
                missing += 1
                continue
            twice += len(found) - 1
            expected_key = f"customer:{cid}:attempt:{crossing.attempts}:{crossing.kind}"
            match = [row for row in found if row.key == expected_key]
            if not match:
                wrong += 1
                continue
            alert = match[0]
            latency = (alert.opened_at - crossing.at).total_seconds()
            latencies.append(latency)
            if latency < 0:
                early.append(latency)
            if alert.id in watcher.seen:
                visible.append(watcher.seen[alert.id] - crossing.at.timestamp())
            else:
                unseen += 1
        others = [row for row in alert_rows if row.customer_id is not None and row.customer_id not in stream_ids]
        incidents = [row for row in alert_rows if row.kind == "incident"]
        folded = sum(1 for row in alert_rows if row.incident_id is not None)
        not_updated = 0
        for cid, crossing in plan.stream.items():
            row = after.get(cid)
            thresholds = effects.policy.thresholds(crossing.provider, crossing.customer_type)
            expected_deadline = thresholds.critical.due(row.pending_since) if crossing.kind == "overdue" else None
            expected_tier = "critical" if crossing.kind == "overdue" else None
            if (row is None or row.tier != crossing.kind or row.deadline_at != expected_deadline
                    or row.deadline_tier != expected_tier or row.deadline_lease_owner is not None):
                not_updated += 1

        p99 = percentile(latencies, 0.99)
        vp99 = percentile(visible, 0.99)
        latency_ok = len(latencies) > 0 and p99 < LATENCY_P99_TARGET_S
        visible_ok = len(visible) > 0 and vp99 < LATENCY_P99_TARGET_S
        once_ok = not (missing or twice or wrong or early or others or not_updated)
        ok = ok and latency_ok and visible_ok and once_ok

        # the due query in the worker, tick by tick
        during = [(t, ms, n) for t, ms, n in probe_samples if window_start <= t <= last.timestamp() + 1.5]
        idle = [(t, ms, n) for t, ms, n in probe_samples if t < window_start and t >= ready and n == 0]
        for label, samples in (("idle ticks (nothing due)", idle), ("ticks during the stream", during)):
            durations = [ms for _, ms, _ in samples]
            p99_ms = percentile(durations, 0.99)
            passed = bool(durations) and p99_ms < DUE_P99_TARGET_MS
            ok = ok and passed
            claimed = sorted(n for _, _, n in samples)
            rows_note = f", rows per claim p50 {claimed[len(claimed) // 2]} max {claimed[-1]}" if claimed else ""
            if len(durations) >= 40:
                rows_note += (f", first/last 20 ticks p50 {statistics.median(durations[:20]):.1f}/"
                              f"{statistics.median(durations[-20:]):.1f} ms")
            lines.append(Line(backend, f"due query, in the worker: {label}{rows_note}", spread(durations, "ms",
                                                                                                   digits=2),
                              f"p99 < {DUE_P99_TARGET_MS:.0f} ms", f"{p99_ms / DUE_P99_TARGET_MS:.2f}",
                              verdict(passed)))
        stamps = [t for t, _, _ in probe_samples if window_start - 1.5 <= t <= last.timestamp() + 1.5]
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        settles = [(ms, n) for t, ms, n in settle_samples if window_start <= t <= last.timestamp() + 3]
        per_customer = [ms / n for ms, n in settles if n]
        lines.append(Line(backend, "the Escalator's settling per tick (no target)",
                          spread([ms for ms, _ in settles], "ms", digits=0)
                          + (f"; first/last 10 ticks p50 {statistics.median(ms for ms, _ in settles[:10]):.0f}/"
                             f"{statistics.median(ms for ms, _ in settles[-10:]):.0f} ms"
                             f"; {statistics.median(per_customer):.2f} ms per customer (p50); ticks apart: longest "
                             f"{max(gaps):.2f} s, {sum(g > 1.5 for g in gaps)} over 1.5 s" if gaps and per_customer
                             else "")))
        slow = [(t - ms / 1000, t) for t, ms, _ in settle_samples if window_start <= t and ms > 900]
        if slow:
            lines.append(Line(backend, f"  {len(slow)} settles over 0.9 s: what the machine did meanwhile (no target)",
                              pressure(watcher.samples, slow, window_start, last.timestamp())))
        lines.append(Line(backend, f"crossing -> alert (opened_at), {args.rate:g}/s for {args.window:g} s",
                          spread(latencies, "s", digits=3), f"p99 < {LATENCY_P99_TARGET_S:g} s",
                          f"{p99 / LATENCY_P99_TARGET_S:.2f}", verdict(latency_ok)))
        lines.append(Line(backend, f"crossing -> alert seen committed (bench polls every {WATCH_PERIOD * 1000:.0f} ms)",
                          spread(visible, "s", digits=3) + (f", {unseen} not seen" if unseen else ""),
                          f"p99 < {LATENCY_P99_TARGET_S:g} s", f"{vp99 / LATENCY_P99_TARGET_S:.2f}",
                          verdict(visible_ok)))
        lines.append(Line(backend, "one alert per crossing, of its tier",
                          f"{len(latencies):,} of {len(plan.stream):,}: {missing} missing, {twice} extra, "
                          f"{wrong} of another tier, {len(early)} before the crossing, {len(others)} for other "
                          f"customers, {not_updated} rows not at their new tier/deadline",
                          "all once", "", verdict(once_ok)))
        stream_alert_ids = {row.id: row for row in alert_rows if row.customer_id in stream_ids}
        sent = [(row.sent_at - plan.stream[stream_alert_ids[row.alert_id].customer_id].at).total_seconds()
                for row in notice_rows if row.alert_id in stream_alert_ids and row.state == "sent"]
        queued = sum(1 for row in notice_rows if row.alert_id in stream_alert_ids)
        lines.append(Line(backend, "notices delivered to the log channel by the end (no target)",
                          f"{len(sent):,} of {queued:,}; crossing -> sent " + spread(sent, "s", digits=1)
                          + (f"; {len(incidents)} incidents, {folded} alerts folded" if incidents else "")))
        stall = (f", CPU stall (PSI some) {(stall_after - stall_before) / window_seconds:.0%} of the window"
                 if stall_before is not None and stall_after is not None else "")
        lines.append(Line(backend, "worker CPU during the window (no target)",
                          f"{cpu_window:.1f} s in {window_seconds:.0f} s = {cpu_window / window_seconds:.0%} of a "
                          "core, "
                          f"{cpu_window / max(len(plan.stream), 1) * 1000:.2f} ms per crossing; load average "
                          f"{load_before:.1f} -> {load_after:.1f}{stall}"))
        if code not in (0, None):
            log(f"{backend}: the worker exited with {code}:\n  {worker_tail}")
        errors = [ln for ln in worker_tail.splitlines() if "ERROR" in ln or "Traceback" in ln]
        if errors:
            log(f"{backend}: the worker logged errors:\n  {worker_tail}")
        return lines, plans, ok
    finally:
        if watcher is not None and watcher.is_alive():
            watcher.stop()
        stop(worker)
        if engine is not None:
            engine.dispose()
        if pg_created and not args.keep:
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
        if args.keep:
            log(f"{backend}: kept {workdir}" + (f" and database {PG_DATABASE}" if pg_created else ""))
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def print_report(lines: list[Line], plans: list[str], args: argparse.Namespace) -> None:
    print("bench/escalation: EXPLAIN of the due query's statements (rolled back)")
    for line in plans:
        print(line)
    print()
    print(f"bench/escalation: {args.customers:,} customers, {args.pending:,} pending; {args.stream:,} crossings at "
          f"{args.rate:g}/s over {args.window:g} s (4/5 overdue at 2 h, 1/5 critical at 5 h); `tracker worker`, "
          f"tick 1 s (default), no provider credentials (no check before alerting: nothing to poll), log channel, "
          f"TRACKER_INCIDENT_THRESHOLD={args.incident_threshold} ("
          + ("per-customer alerts not folded" if args.incident_threshold > args.stream else "incident folding on")
          + f"); {os.cpu_count()} cores, load average {args.load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    head = Line("backend", "check", "result", "target", "of target", "verdict")
    names: tuple[str, ...] = ("backend", "check", "figure", "target", "ratio", "verdict")
    widths = [max(len(getattr(line, f)) for line in [head, *lines]) for f in names]
    for line in [head, *lines]:
        print("  ".join(getattr(line, f).ljust(w) for f, w in zip(names, widths, strict=True)).rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 100,000 customers, 20,000 pending, 15 s window (unless given)")
    parser.add_argument("--customers", type=int, help="default 1,000,000 (--quick 100,000)")
    parser.add_argument("--pending", type=int, help="default a fifth of the customers")
    parser.add_argument("--rate", type=float, default=100.0, help="crossings per second (default 100)")
    parser.add_argument("--window", type=float, help="seconds of crossings (default 60, --quick 15)")
    parser.add_argument("--reps", type=int, default=300, help="bench-side repetitions of the due query per case")
    parser.add_argument("--due-reps", type=int, default=30,
                        help="PostgreSQL: repetitions of the rolled-back claim with rows due (default 30; see above)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds the worker ticks before the stream")
    parser.add_argument("--lead", type=float, default=5.0, help="seconds from placing the stream to its first "
                                                                "crossing")
    parser.add_argument("--incident-threshold", type=int, default=1_000_000,
                        help="TRACKER_INCIDENT_THRESHOLD for the worker (default 1,000,000: no folding)")
    parser.add_argument("--py-spy", metavar="FILE", help="profile the worker during the window (py-spy raw format)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the database and files")
    parser.add_argument("--worker-probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_probe:
        return run_worker(args.worker_probe)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the worker and the database are cleaned up
    sys.path.insert(0, str(HERE))  # bench/read.py's loader
    args.customers = args.customers or (100_000 if args.quick else 1_000_000)
    args.pending = args.pending if args.pending is not None else args.customers // 5
    args.window = args.window or (15.0 if args.quick else 60.0)
    args.stream = round(args.rate * args.window)
    if not 0 < args.stream <= args.pending <= args.customers:
        parser.error("need 0 < rate x window <= pending <= customers")
    args.load_before = os.getloadavg()[0]
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    lines: list[Line] = []
    plans: list[str] = []
    ok = True
    for backend in backends:
        backend_lines, backend_plans, backend_ok = run_backend(backend, args)
        lines += backend_lines
        plans += backend_plans
        ok = ok and backend_ok
    print_report(lines, plans, args)
    print("bench/escalation: all targets met" if ok else "bench/escalation: some targets missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

