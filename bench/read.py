"""bench/read: the read path under load, on SQLite and on PostgreSQL.

For each backend it creates a fresh database (a file in a temporary directory; a ``bench_read_<random>``
PostgreSQL database, dropped afterwards), applies the migrations with ``tracker db upgrade``, seeds
``--customers`` customers in bulk (COPY on PostgreSQL, multi-row INSERTs on SQLite; the customer indexes are
built after the load, from the same definitions as the migrations; PostgreSQL then gets the VACUUM ANALYZE
autovacuum would soon run), creates a read API key and starts ``tracker serve --no-worker`` as an operator
would (TRACKER_LOG_LEVEL=warning). Then:

1. ``GET /v1/customers/{id}`` for random customers (``--sample`` of them), with wrk over loopback, 32
   connections and one wrk thread as bench/ingest, against a bare Starlette endpoint served with the same
   uvicorn settings in the same run, which answers a customer-sized JSON without doing anything else.
   Target: at least 0.6 of bare's requests per second.
2. The same with ``If-None-Match`` carrying each customer's current ETag, so every answer is a 304.
   Target: at least 0.7 of bare.
3. Filtered lists over all the customers (1,000,000 by default): several realistic filters with limit=50.
   Each filter's chains (a first page and the cursor pages after it) are walked once with a Python client,
   which checks every item against the filter and the order; wrk then replays those pages at a modest
   concurrency (``--list-concurrency``) and reports the latency. Target: p99 under 50 ms per filter.

The wrk runs of 1 and 2 alternate (bare, GET, 304) for ``--rounds`` rounds; each figure is the median of its
rounds, and each ratio the median of the rounds' ratios (bare and tracker measured back to back). Next to
requests per second, the table shows the server process's CPU time per request and the ratio of those (bare
/ tracker), which a busy machine disturbs less. Exit status 0 when every target is met.

    bench/read                                # both backends, 1,000,000 customers
    bench/read --backend sqlite --customers 100000 --duration 5 --rounds 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tracker.web.responses import customer_etag

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LUA = HERE / "read.lua"
LIST_LUA = HERE / "read_list.lua"
PG_ADMIN = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

GET_TARGET = 0.6
NOT_MODIFIED_TARGET = 0.7
LIST_P99_TARGET_MS = 50.0

COLUMNS = ("id", "provider", "provider_customer_id", "customer_type", "reference", "application_id", "state",
           "provider_status", "tier", "pending_since", "decided_at", "last_provider_time", "rejection_reason",
           "attempts", "rejections", "version", "discovered_by", "flags", "created_at", "updated_at")
PROVIDERS = (("blaaiz", 0.5), ("connectfi", 0.3), ("cryptopocket", 0.2))
STATES = (("verified", 0.68), ("awaiting_documents", 0.15), ("rejected", 0.08), ("needs_action", 0.05),
          ("pending", 0.04))
PROVIDER_STATUS = {
    "blaaiz": {"verified": "VERIFIED", "rejected": "REJECTED", "pending": "PROCESSING", "needs_action": "PENDING",
               "awaiting_documents": None},
    "connectfi": {"verified": "approved", "rejected": "declined", "pending": "waiting_review",
                  "needs_action": "resubmission_requested", "awaiting_documents": "created"},
    "cryptopocket": {"verified": "APPROVED", "rejected": "REJECTED", "pending": "PROCESSING",
                     "needs_action": "ADDITIONAL_INFO_REQUIRED", "awaiting_documents": "NEW"},
}
HOUR = 3600.0
DAY = 86400.0
OVERDUE_AFTER = 2 * HOUR  # the defaults of TRACKER_OVERDUE_AFTER and TRACKER_CRITICAL_AFTER
CRITICAL_AFTER = 5 * HOUR


def log(message: str) -> None:
    print(f"[bench/read {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the data ------------------------------------------------------------------------------------------

@dataclass
class Seeded:
    count: int
    seconds: float
    index_seconds: float
    sample: list[tuple[int, str]]  # (id, ETag) of random customers
    references: list[str]
    provider_customer_ids: list[str]


def _pick(rng: random.Random, table: tuple[tuple[str, float], ...]) -> str:
    x = rng.random()
    for name, weight in table:
        x -= weight
        if x < 0:
            return name
    return table[-1][0]


def generate(n: int, now: float, seed: int = 1) -> Iterator[tuple[Any, ...]]:
    """Customers 1..n, ids in creation order over two years, spread over providers and states (4% pending: a
    backlog, most under 2 h, some for days). Pending ones are escalated to overdue at 2 h and critical at 5 h,
    which bumps version and updated_at as escalation does; decided ones carry decided_at. Values are Python
    objects; timestamps are epoch seconds (floats), converted by each loader."""
    rng = random.Random(seed)
    start = now - 730 * DAY
    span = 730 * DAY
    ref_space = max(1, int(n * 0.85))  # some people have customers at two providers, under one reference
    for i in range(1, n + 1):
        provider = _pick(rng, PROVIDERS)
        state = _pick(rng, STATES)
        created = start + span * (i - 1) / n + rng.random() * 60
        pending_since = decided_at = last_provider_time = None
        rejection_reason = None
        tier = "none"
        attempts = rejections = 0
        if state == "pending":
            r = rng.random()
            if r < 0.55:
                age = rng.random() * OVERDUE_AFTER
            elif r < 0.85:
                age = OVERDUE_AFTER + rng.random() * (CRITICAL_AFTER - OVERDUE_AFTER)
            else:
                age = CRITICAL_AFTER * math.exp(rng.random() * math.log(7 * DAY / CRITICAL_AFTER))
            pending_since = now - age
            created = min(created, pending_since - rng.random() * DAY)
            attempts = 1 + (rng.random() < 0.1)
            version = 2 + attempts
            updated = pending_since
            if age >= CRITICAL_AFTER:
                tier, version, updated = "critical", version + 2, pending_since + CRITICAL_AFTER
            elif age >= OVERDUE_AFTER:
                tier, version, updated = "overdue", version + 1, pending_since + OVERDUE_AFTER
            if provider != "blaaiz":
                last_provider_time = pending_since
        elif state in ("verified", "rejected"):
            attempts = 1 + (rng.random() < 0.15)
            decided_at = min(created + HOUR + rng.random() * 5 * DAY, now - 1)
            last_provider_time = decided_at - rng.random() * 5
            updated = decided_at
            version = 2 + 2 * attempts
            if state == "rejected":
                rejections = attempts
                rejection_reason = "The document is blurred; upload a sharper picture of the whole page"
        elif state == "needs_action":
            attempts = 1
            updated = min(created + HOUR + rng.random() * 10 * DAY, now - 1)
            last_provider_time = updated
            version = 3
        else:  # awaiting_documents
            updated = min(created + rng.random() * 2 * DAY, now - 1)
            version = 1 + (rng.random() < 0.3)
        business = rng.random() < 0.12
        scrambled = (i * 2654435761) % (1 << 40)
        if provider == "blaaiz":
            pcid = f"cus_{scrambled:010x}"
        elif provider == "connectfi":
            pcid = f"cf-{scrambled:010x}-{i % 97:02d}"
        else:
            pcid = f"{scrambled:013d}"
        reference = f"usr_{rng.randrange(ref_space):08d}" if rng.random() < 0.9 else None
        flags = ('["business_upload_via_individual_slot"]'
                 if business and provider == "blaaiz" and rng.random() < 0.2 else None)
        yield (i, provider, pcid, "business" if business else "individual", reference,
               f"app_{i:08d}" if provider == "connectfi" else None, state, PROVIDER_STATUS[provider][state], tier,
               pending_since, decided_at, last_provider_time, rejection_reason, attempts, rejections, version,
               "webhook" if rng.random() < 0.2 else "api", flags, created, updated)


TIMESTAMP_COLUMNS = tuple(COLUMNS.index(name) for name in ("pending_since", "decided_at", "last_provider_time",
                                                              "created_at", "updated_at"))


class Collector:
    """Keeps what the load needs afterwards: ETags of random customers, real references and provider ids."""

    def __init__(self, n: int, sample_size: int, seed: int = 2) -> None:
        rng = random.Random(seed)
        self.wanted = set(rng.sample(range(1, n + 1), min(sample_size, n)))
        self.lookups = set(rng.sample(range(1, n + 1), min(2000, n)))
        self.sample: list[tuple[int, str]] = []
        self.references: list[str] = []
        self.pcids: list[str] = []

    def see(self, row: tuple[Any, ...]) -> None:
        ident = row[0]
        if ident in self.wanted:
            # seeded in bulk, not through update_customers: no write counted (``touches`` is its default, 0)
            self.sample.append((ident, customer_etag({"id": ident, "version": row[15], "touches": 0})))
        if ident in self.lookups:
            self.pcids.append(row[2])
            if row[4] is not None:
                self.references.append(row[4])


def _sqlite_stamp(value: float | None) -> str | None:
    # SQLAlchemy's SQLite DateTime storage format (naive UTC, always with microseconds), as the app writes it.
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _pg_stamp(value: float | None) -> str:
    if value is None:
        return "\\N"
    return datetime.fromtimestamp(value, UTC).isoformat(" ", "microseconds")


def _index_ddl(dialect: Any) -> list[tuple[str, str]]:
    from sqlalchemy.schema import CreateIndex

    from tracker.db.tables import customers

    return [(index.name, str(CreateIndex(index).compile(dialect=dialect)))  # type: ignore[arg-type]
            for index in sorted(customers.indexes, key=lambda i: str(i.name))]


def seed_sqlite(path: str, n: int, collector: Collector) -> tuple[float, float]:
    return load_sqlite(path, COLUMNS, _collected(generate(n, NOW), collector), TIMESTAMP_COLUMNS)


def seed_postgres(url: str, n: int, collector: Collector) -> tuple[float, float]:
    return load_postgres(url, COLUMNS, _collected(generate(n, NOW), collector), TIMESTAMP_COLUMNS)


def _collected(rows: Iterable[tuple[Any, ...]], collector: Collector) -> Iterator[tuple[Any, ...]]:
    for row in rows:
        collector.see(row)
        yield row


def load_sqlite(path: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]],
                timestamps: Sequence[int]) -> tuple[float, float]:
    """Bulk-load customer rows (``columns``, in that order; the values at positions ``timestamps`` are epoch
    seconds or None) into a migrated, empty SQLite database; the customer indexes are dropped first and built
    after the load. Returns (seconds in all, of which building the indexes). Also used by bench/escalation."""
    import sqlite3

    from sqlalchemy.dialects import sqlite as sqlite_dialect

    started = time.perf_counter()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=DELETE")  # back to WAL below; a bulk load needs no log
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-262144")
    ddl = _index_ddl(sqlite_dialect.dialect())
    for name, _ in ddl:
        db.execute(f"DROP INDEX IF EXISTS {name}")
    width = len(columns)
    rows_per_insert = max(1, 1000 // width)  # multi-row INSERTs under the bind parameter limit (50 for 20 columns)
    one = "(" + ",".join("?" * width) + ")"
    statement = f"INSERT INTO customers ({', '.join(columns)}) VALUES " + ",".join([one] * rows_per_insert)
    single = f"INSERT INTO customers ({', '.join(columns)}) VALUES {one}"
    db.execute("BEGIN")
    batch: list[Any] = []
    count = 0
    for row in rows:
        values = list(row)
        for c in timestamps:
            values[c] = _sqlite_stamp(values[c])
        batch.extend(values)
        count += 1
        if count == rows_per_insert:
            db.execute(statement, batch)
            batch, count = [], 0
    for k in range(count):
        db.execute(single, batch[k * width:(k + 1) * width])
    db.execute("COMMIT")
    loaded = time.perf_counter()
    for _, sql in ddl:
        db.execute(sql)
    db.execute("PRAGMA journal_mode=WAL")
    db.close()
    done = time.perf_counter()
    return done - started, done - loaded


def load_postgres(url: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]],
                  timestamps: Sequence[int]) -> tuple[float, float]:
    """As ``load_sqlite``, with COPY, then the VACUUM ANALYZE autovacuum would soon run."""
    import psycopg
    from sqlalchemy.dialects import postgresql as pg_dialect

    started = time.perf_counter()
    ddl = _index_ddl(pg_dialect.dialect())
    with psycopg.connect(url, autocommit=True) as conn:
        for name, _ in ddl:
            conn.execute(f"DROP INDEX IF EXISTS {name}")
        with conn.transaction(), conn.cursor() as cur, \
                cur.copy(f"COPY customers ({', '.join(columns)}) FROM STDIN") as copy:
            lines: list[str] = []
            for row in rows:
                fields = ["\\N" if v is None else str(v) for v in row]
                for c in timestamps:
                    fields[c] = _pg_stamp(row[c])
                lines.append("\t".join(fields))
                if len(lines) >= 20000:
                    copy.write("\n".join(lines) + "\n")
                    lines = []
            if lines:
                copy.write("\n".join(lines) + "\n")
        conn.execute("SELECT setval(pg_get_serial_sequence('customers', 'id'), (SELECT max(id) FROM customers))")
        loaded = time.perf_counter()
        conn.execute("SET maintenance_work_mem = '256MB'")
        for _, sql in ddl:
            conn.execute(sql)
        conn.execute("VACUUM (ANALYZE) customers")  # what autovacuum does soon after a load like this
    done = time.perf_counter()
    return done - started, done - loaded


NOW = time.time()


# --- processes -----------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_healthy(process: subprocess.Popen[bytes], url: str, what: str, log_file: Path) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bench/read: {what} exited at start: {log_file.read_text(errors='replace')}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"bench/read: {what} did not answer /healthz within 60 s")


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def tracker_env(url: str) -> dict[str, str]:
    return {**os.environ, "TRACKER_DATABASE_URL": url, "TRACKER_LOG_LEVEL": "warning"}


def tracker_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tracker.cli", *args]


# --- the bare reference --------------------------------------------------------------------------------

def bare_body() -> bytes:
    """A customer as the tracker sends it (same fields, typical values): the bare endpoint's answer."""
    return json.dumps({
        "id": 503112, "provider": "blaaiz", "provider_customer_id": "cus_0b8e4a1f3c", "reference": "usr_00427711",
        "application_id": None, "customer_type": "individual", "state": "pending", "provider_status": "PROCESSING",
        "tier": "overdue", "pending_since": "2026-01-05T07:12:44.120331Z", "pending_seconds": 9431,
        "decided_at": None, "rejection_reason": None, "attempts": 1, "rejections": 0, "discovered_by": "api",
        "flags": [], "created_at": "2026-01-04T18:02:10.552093Z", "updated_at": "2026-01-05T09:12:44.120331Z",
        "version": 4,
    }, separators=(",", ":")).encode()


def serve_bare(host: str, port: int) -> None:
    """A bare Starlette endpoint on the tracker's route, served with the same uvicorn.run settings as
    ``tracker serve`` (tracker.cli.cmd_serve) at log level warning. It does nothing but answer."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    body = bare_body()

    async def customer(request: Request) -> Response:
        return Response(body, media_type="application/json",
                        headers={"ETag": f'"c{request.path_params["id"]}-v4-overdue"'})

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    app = Starlette(routes=[Route("/v1/customers/{id:int}", customer, methods=["GET"]),
                            Route("/healthz", healthz, methods=["GET"])])
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, proxy_headers=True,
                server_header=False, timeout_graceful_shutdown=10)


# --- wrk -----------------------------------------------------------------------------------------------

@dataclass
class WrkRun:
    rps: float
    p50_ms: float
    p99_ms: float
    completed: int
    unexpected: int
    errors: int
    codes: str
    cpu_us: float  # the server process's CPU time per completed request (less noisy than req/s on a busy box)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, ids_file: Path, key: str, mode: str, args: argparse.Namespace, duration: float,
            pid: int) -> WrkRun:
    command = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration:g}s", "--timeout", "10s",
               "-s", str(LUA), url, "--", str(ids_file), key, mode]
    cpu_before = cpu_seconds(pid)
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    cpu = cpu_seconds(pid) - cpu_before
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise SystemExit(f"bench/read: wrk gave no result:\n{out.stdout}\n{out.stderr}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    errors = data["connect_errors"] + data["read_errors"] + data["write_errors"] + data["timeouts"]
    return WrkRun(rps=data["completed"] / (data["duration_us"] / 1e6), p50_ms=data["p50_us"] / 1000,
                  p99_ms=data["p99_us"] / 1000, completed=data["completed"], unexpected=data["unexpected"],
                  errors=errors, codes=data["codes"].strip(),
                  cpu_us=cpu / max(data["completed"], 1) * 1e6)


def median_run(runs: list[WrkRun]) -> WrkRun:
    ordered = sorted(runs, key=lambda r: r.rps)
    return ordered[len(ordered) // 2]


# --- lists ---------------------------------------------------------------------------------------------

@dataclass
class ListFilter:
    name: str
    make: Callable[[random.Random], dict[str, str]]
    paths: list[str] = field(default_factory=list)
    items: int = 0
    problems: list[str] = field(default_factory=list)
    run: ListRun | None = None


@dataclass
class ListRun:
    completed: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    unexpected: int
    codes: str


def list_filters(seeded: Seeded) -> list[ListFilter]:
    providers = [p for p, _ in PROVIDERS]
    states = [s for s, _ in STATES]
    return [
        ListFilter("provider+state", lambda r: {"provider": r.choice(providers), "state": r.choice(states)}),
        ListFilter("state", lambda r: {"state": r.choice(states)}),
        ListFilter("provider", lambda r: {"provider": r.choice(providers)}),
        ListFilter("no filter", lambda r: {}),
        ListFilter("state=pending&pending_longer_than=2h",
                   lambda r: {"state": "pending", "pending_longer_than": "2h"}),
        ListFilter("pending_longer_than=5h", lambda r: {"pending_longer_than": "5h"}),
        ListFilter("provider+pending_longer_than=2h",
                   lambda r: {"provider": r.choice(providers), "pending_longer_than": "2h"}),
        ListFilter("tier (overdue|critical)", lambda r: {"tier": r.choice(("overdue", "critical"))}),
        ListFilter("state=pending&tier=critical", lambda r: {"state": "pending", "tier": "critical"}),
        ListFilter("reference", lambda r: {"reference": r.choice(seeded.references)}),
        ListFilter("provider_customer_id",
                   lambda r: {"provider_customer_id": r.choice(seeded.provider_customer_ids)}),
    ]


def _check_page(params: dict[str, str], items: list[dict[str, Any]], now: datetime) -> str | None:
    keys = [(item["updated_at"], item["id"]) for item in items]
    if keys != sorted(keys, reverse=True):
        return "items not in newest-change-first order"
    for item in items:
        for name in ("provider", "state", "tier", "reference", "provider_customer_id"):
            if name in params and item[name] != params[name]:
                return f"item {item['id']} has {name}={item[name]!r}, filter {params[name]!r}"
        if "pending_longer_than" in params:
            hours = int(params["pending_longer_than"].removesuffix("h"))
            since = datetime.fromisoformat(item["pending_since"].replace("Z", "+00:00"))
            if item["state"] != "pending" or (now - since).total_seconds() < hours * 3600 - 60:
                return f"item {item['id']} is not pending longer than {params['pending_longer_than']}"
    return None


def walk_lists(base: str, key: str, filters: list[ListFilter], args: argparse.Namespace) -> None:
    """Walk every chain (first page, then cursor pages) once, checking each page against its filter, and keep
    the paths requested: they are what wrk replays."""
    import httpx

    rng = random.Random(3)
    with httpx.Client(base_url=base, headers={"authorization": f"Bearer {key}"}, timeout=30) as client:
        for flt in filters:
            for _ in range(args.list_chains):
                params = flt.make(rng)
                cursor = None
                for _ in range(args.pages):
                    query = {**params, "limit": "50", **({"cursor": cursor} if cursor else {})}
                    response = client.get("/v1/customers", params=query)
                    if response.status_code != 200:
                        flt.problems.append(f"{response.status_code} for {query}: {response.text[:200]}")
                        break
                    flt.paths.append(f"/v1/customers?{response.request.url.query.decode()}")
                    data = response.json()
                    flt.items += len(data["items"])
                    problem = _check_page(params, data["items"], datetime.now(UTC))
                    if problem:
                        flt.problems.append(problem)
                    cursor = data["next_cursor"]
                    if cursor is None:
                        break


def run_list_wrk(url: str, paths_file: Path, key: str, args: argparse.Namespace, duration: float) -> ListRun:
    command = ["wrk", "-t1", f"-c{args.list_concurrency}", f"-d{duration:g}s", "--timeout", "10s",
               "-s", str(LIST_LUA), url, "--", str(paths_file), key]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise SystemExit(f"bench/read: wrk gave no result:\n{out.stdout}\n{out.stderr}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    return ListRun(completed=data["completed"], p50_ms=data["p50_us"] / 1000, p99_ms=data["p99_us"] / 1000,
                   max_ms=data["max_us"] / 1000, unexpected=data["unexpected"] + data["socket_errors"],
                   codes=data["codes"].strip())


# --- one backend ---------------------------------------------------------------------------------------

@dataclass
class Line:
    backend: str
    check: str
    figure: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    verdict: str = ""


def run_backend(backend: str, args: argparse.Namespace) -> tuple[list[Line], bool]:
    workdir = Path(tempfile.mkdtemp(prefix="bench_read_"))
    pg_name = None
    tracker = bare = None
    lines: list[Line] = []
    ok = True
    try:
        if backend == "sqlite":
            url = f"sqlite:///{workdir / 'tracker.db'}"
        else:
            import psycopg

            pg_name = f"bench_read_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{pg_name}"')
            url = f"{PG_ADMIN.rsplit('/', 1)[0]}/{pg_name}"
        env = tracker_env(url)
        subprocess.run(tracker_command("db", "upgrade"), env=env, check=True, stdout=subprocess.DEVNULL)

        log(f"{backend}: seeding {args.customers:,} customers")
        collector = Collector(args.customers, args.sample)
        if backend == "sqlite":
            seconds, index_seconds = seed_sqlite(str(workdir / "tracker.db"), args.customers, collector)
        else:
            seconds, index_seconds = seed_postgres(url, args.customers, collector)
        seeded = Seeded(args.customers, seconds, index_seconds, collector.sample, collector.references,
                        collector.pcids)
        log(f"{backend}: seeded in {seconds:.1f} s (of which indexes {index_seconds:.1f} s)")
        lines.append(Line(backend, f"seed {args.customers:,} customers", f"{seconds:.1f} s",
                          target=f"(indexes {index_seconds:.1f} s)"))

        from tracker.apikeys import ApiKeys
        from tracker.clock import SystemClock
        from tracker.db.engine import make_engine

        engine = make_engine(url)
        key = ApiKeys(engine, SystemClock()).create("bench-read", "read")
        engine.dispose()

        ids_file = workdir / "ids.tsv"
        ids_file.write_text("".join(f"{ident}\t{etag}\n" for ident, etag in seeded.sample))

        port, bare_port = free_port(), free_port()
        # Their stderr goes to files (a pipe nobody reads could fill up and stall a server).
        tracker_log, bare_log = workdir / "tracker.log", workdir / "bare.log"
        with tracker_log.open("wb") as tracker_err, bare_log.open("wb") as bare_err:
            tracker = subprocess.Popen(
                tracker_command("serve", "--no-worker", "--host", "127.0.0.1", "--port", str(port)),
                env=env, stdout=subprocess.DEVNULL, stderr=tracker_err)
            bare = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--serve-bare", "--port", str(bare_port)],
                stdout=subprocess.DEVNULL, stderr=bare_err)
        base, bare_base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{bare_port}"
        wait_healthy(tracker, base, "tracker serve", tracker_log)
        wait_healthy(bare, bare_base, "the bare server", bare_log)
        log(f"{backend}: tracker serve pid {tracker.pid} on {base}, bare pid {bare.pid} on {bare_base}")
        if not sanity_check(base, key, seeded.sample[:20]):
            ok = False

        if "get" in args.parts:
            runs: dict[str, list[WrkRun]] = {"bare": [], "get": [], "conditional": []}
            targets = {"bare": (bare_base, "-", "get", bare.pid), "get": (base, key, "get", tracker.pid),
                       "conditional": (base, key, "conditional", tracker.pid)}
            for target, k, mode, pid in targets.values():  # warm-up
                run_wrk(target, ids_file, k, mode, args, args.warmup, pid)
            for r in range(args.rounds):
                for name, (target, k, mode, pid) in targets.items():
                    run = run_wrk(target, ids_file, k, mode, args, args.duration, pid)
                    runs[name].append(run)
                    log(f"{backend}: round {r + 1} {name}: {run.rps:,.0f} req/s, p99 {run.p99_ms:.1f} ms, "
                        f"server CPU {run.cpu_us:.0f} us/request"
                        + (f", {run.unexpected} unexpected ({run.codes})" if run.unexpected else "")
                        + (f", {run.errors} socket errors" if run.errors else ""))
            bare_run, get_run, cond_run = (median_run(runs[n]) for n in ("bare", "get", "conditional"))
            valid = all(r.unexpected == 0 and r.errors == 0 for rs in runs.values() for r in rs)
            if not valid:
                ok = False
            lines.append(Line(backend, "bare Starlette GET (customer-sized JSON)",
                              f"{bare_run.rps:,.0f} req/s  p99 {bare_run.p99_ms:.1f} ms  "
                              f"cpu {bare_run.cpu_us:.0f} us/req"))
            for name, label, run, target in (
                    ("get", "GET /v1/customers/{id} -> 200", get_run, GET_TARGET),
                    ("conditional", "GET /v1/customers/{id} If-None-Match -> 304", cond_run, NOT_MODIFIED_TARGET)):
                # Each round's bare and tracker runs are back to back: the ratio is the median of the rounds'
                # ratios, which drifting load on a shared machine disturbs less than a ratio of medians.
                ratio = statistics.median(t.rps / b.rps for t, b in zip(runs[name], runs["bare"], strict=True))
                cpu_ratio = statistics.median(b.cpu_us / t.cpu_us for t, b in zip(runs[name], runs["bare"],
                                                                                  strict=True))
                passed = ratio >= target and valid
                ok = ok and passed
                lines.append(Line(backend, label, f"{run.rps:,.0f} req/s  p99 {run.p99_ms:.1f} ms  "
                                                  f"cpu {run.cpu_us:.0f} us/req (cpu ratio {cpu_ratio:.2f})",
                                  f"{bare_run.rps:,.0f}", f"{ratio:.2f}", f">= {target:.1f}",
                                  "PASS" if passed else ("INVALID" if not valid else "FAIL")))

        if "list" in args.parts:
            filters = list_filters(seeded)
            started = time.perf_counter()
            walk_lists(base, key, filters, args)
            log(f"{backend}: walked {sum(len(f.paths) for f in filters)} list pages in "
                f"{time.perf_counter() - started:.1f} s, every item checked against its filter")
            for flt in filters:
                paths_file = workdir / f"list_{filters.index(flt)}.txt"
                paths_file.write_text("".join(f"{path}\n" for path in flt.paths))
                if flt.paths:
                    run_list_wrk(base, paths_file, key, args, min(args.warmup, 2))  # warm-up
                    flt.run = run_list_wrk(base, paths_file, key, args, args.list_duration)
                run = flt.run
                for problem in flt.problems[:3]:
                    log(f"{backend}: list {flt.name}: {problem}")
                if run is not None and run.unexpected:
                    flt.problems.append(f"{run.unexpected} answers not 200 ({run.codes})")
                passed = run is not None and run.p99_ms < LIST_P99_TARGET_MS and not flt.problems
                ok = ok and passed
                figure = (f"p99 {run.p99_ms:.1f} ms  p50 {run.p50_ms:.1f} ms  max {run.max_ms:.0f} ms  "
                          f"{run.completed / args.list_duration:,.0f} req/s" if run else "no pages")
                lines.append(Line(backend, f"list {flt.name} ({len(flt.paths)} pages)", figure, "", "",
                                  f"p99 < {LIST_P99_TARGET_MS:.0f} ms",
                                  "PASS" if passed else ("INVALID" if flt.problems else "FAIL")))
        if args.hold:
            log(f"{backend}: holding the servers for {args.hold:g} s: tracker pid {tracker.pid} on {base}, "
                f"bare pid {bare.pid} on {bare_base}, key {key}, ids {ids_file}")
            time.sleep(args.hold)
        return lines, ok
    finally:
        stop(tracker)
        stop(bare)
        server_log = workdir / "tracker.log"
        if server_log.exists() and server_log.stat().st_size:
            tail = server_log.read_text(errors="replace").splitlines()[-20:]
            log(f"{backend}: tracker serve wrote to stderr (last lines):\n  " + "\n  ".join(tail))
        if pg_name is not None and not args.keep:
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
        if args.keep:
            log(f"{backend}: kept {workdir}" + (f" and database {pg_name}" if pg_name else ""))
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def sanity_check(base: str, key: str, sample: list[tuple[int, str]]) -> bool:
    """The precomputed ETags are the ones the tracker sends, and If-None-Match gets a 304."""
    import httpx

    headers = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers) as client:
        for ident, etag in sample:
            response = client.get(f"/v1/customers/{ident}")
            if response.status_code != 200 or response.headers.get("etag") != etag:
                log(f"sanity: customer {ident}: {response.status_code} ETag {response.headers.get('etag')}, "
                    f"expected {etag}")
                return False
            cached = client.get(f"/v1/customers/{ident}", headers={"if-none-match": etag})
            if cached.status_code != 304:
                log(f"sanity: customer {ident} with If-None-Match: {cached.status_code}")
                return False
    return True


def print_table(lines: list[Line], args: argparse.Namespace) -> None:
    head = Line("backend", "check", "result", "bare", "ratio", "target", "verdict")
    widths = [max(len(getattr(line, f)) for line in [head, *lines])
              for f in ("backend", "check", "figure", "baseline", "ratio", "target", "verdict")]
    print(f"bench/read: {args.customers:,} customers; wrk -t{args.threads} -c{args.connections} "
          f"-d{args.duration:g}s, median of {args.rounds} round(s); lists: limit=50, {args.list_chains} chains of "
          f"{args.pages} pages per filter, wrk -t1 -c{args.list_concurrency} -d{args.list_duration:g}s each; "
          f"{os.cpu_count()} cores, load average {args.load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    for line in [head, *lines]:
        cells = [getattr(line, f) for f in ("backend", "check", "figure", "baseline", "ratio", "target", "verdict")]
        print("  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)).rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--parts", default="get,list", help="comma-separated: get (wrk GET and 304), list")
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run (default 10)")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of wrk warm-up per endpoint (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating wrk rounds; the median counts")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1,
                        help="wrk threads (default 1, as bench/ingest: every cycle wrk takes, the server lacks)")
    parser.add_argument("--sample", type=int, default=50_000, help="random customers wrk chooses from")
    parser.add_argument("--list-chains", type=int, default=40, help="first pages per filter (default 40)")
    parser.add_argument("--pages", type=int, default=3, help="pages per chain: the first and cursor pages")
    parser.add_argument("--list-concurrency", type=int, default=4, help="wrk connections for the lists")
    parser.add_argument("--list-duration", type=float, default=5, help="seconds of wrk per list filter")
    parser.add_argument("--keep", action="store_true", help="keep the database and files")
    parser.add_argument("--hold", type=float, default=0, help="keep the servers up this long at the end (profiling)")
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=8001, help=argparse.SUPPRESS)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the servers and databases are cleaned up
    if args.serve_bare:
        serve_bare("127.0.0.1", args.port)
        return 0
    args.parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if shutil.which("wrk") is None and "get" in args.parts:
        raise SystemExit("bench/read: wrk is not installed (apt-get install wrk)")
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    args.load_before = os.getloadavg()[0]
    lines: list[Line] = []
    ok = True
    for backend in backends:
        backend_lines, backend_ok = run_backend(backend, args)
        lines += backend_lines
        ok = ok and backend_ok
    print_table(lines, args)
    print("bench/read: all targets met" if ok else "bench/read: some targets missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
