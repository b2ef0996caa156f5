"""bench/kill9: ``kill -9`` the server during a webhook load, restart it, repeat; then check the inbox.

One command (``bench/kill9`` or ``python bench/kill9.py``). For each backend (SQLite, PostgreSQL or both) it
creates a fresh database (for PostgreSQL: a new database and ``tracker db upgrade`` once), then runs ROUNDS
rounds of:

1. start ``tracker serve --no-worker`` on the database and wait for ``/healthz``;
2. re-send a random part (``--resend``) of the events not yet acknowledged, as a provider retry would (same
   body, fresh signature): each must be answered ``accepted`` (it was lost) or ``duplicate`` (it was stored
   after all, only the answer was lost);
3. drive signed Blaaiz webhooks, each with its own event id and its own content (its own customer), from
   CONCURRENCY asyncio httpx workers, and record every event answered 2xx (acknowledged);
4. after a random 0.5-2 s, SIGKILL the server in the middle of that load. Requests that fail with a transport
   error are unacknowledged: they may or may not have been stored, both are allowed.

Then it queries the database (the server is dead): every acknowledged event id must be stored exactly once as an
original (``duplicate_of IS NULL``), no event id may be stored twice as an original, and the inbox row each 2xx
named must exist and belong to that event. Last, a final retry: the server is started once more, every event
still unacknowledged is re-sent, the server's applier is given time to apply everything stored (events stored
before a kill but not yet applied included), the server is stopped, and now every event ever sent must be
stored exactly once and applied exactly once: its outcome ``applied`` (each event moves a customer of its own),
one history row for it, and no customer moved twice.

It prints counts per round and totals, and PASS or FAIL per backend; the exit status is 1 on FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import httpx
from sqlalchemy import text

from tracker.db.engine import make_engine

SECRET = "whsec_bench_kill9"
PG_ADMIN = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
STATUSES = (("VERIFIED", None), ("PROCESSING", None), ("REJECTED", "document is blurred"))


# -- one event -----------------------------------------------------------------------------------------------

@dataclass
class Event:
    event_id: str
    body: bytes
    round: int
    acked_row: int | None = None  # the inbox row the first 2xx named
    answers: list[str] = field(default_factory=list)

    @property
    def acked(self) -> bool:
        return self.acked_row is not None


def make_event(tag: str, round_no: int, n: int) -> Event:
    """A Blaaiz status change for a customer of its own: new content, and ``accepted`` when first stored."""
    event_id = f"k9_{tag}_{round_no:02d}_{n:06d}"
    status, comment = STATUSES[n % len(STATUSES)]
    payload = {
        "message": "Customer status updated", "event_type": "customer.status_changed",
        "customer_id": f"cus_{event_id}", "customer_email": "someone@example.invalid", "old_status": "PENDING",
        "new_status": status, "comment": comment, "updated_at": "2026-01-05T09:30:00Z", "event_id": event_id,
        "type": "customer",
    }
    return Event(event_id, json.dumps(payload).encode(), round_no)


def signed_headers(body: bytes) -> dict[str, str]:
    timestamp = str(int(time.time()))
    signature = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return {"content-type": "application/json", "x-blaaiz-timestamp": timestamp, "x-blaaiz-signature": signature}


# -- the server ------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tracker_env(database_url: str) -> dict[str, str]:
    """The caller's environment without its TRACKER_ variables (the tracker refuses names it does not know,
    such as the test suite's TEST_DB_BACKEND), plus the three settings this run needs."""
    inherited = {name: value for name, value in os.environ.items() if not name.startswith("TRACKER_")}
    return {**inherited, "TRACKER_DATABASE_URL": database_url, "TRACKER_BLAAIZ_WEBHOOK_SECRETS": SECRET,
            "TRACKER_LOG_LEVEL": "warning"}


class Server:
    """``tracker serve --no-worker`` in its own process; its stderr goes to ``log``."""

    def __init__(self, database_url: str, log: Path) -> None:
        self.database_url = database_url
        self.log = log
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        self.port = free_port()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tracker.cli", "serve", "--no-worker", "--port", str(self.port)],
                env=tracker_env(self.database_url), stdout=subprocess.DEVNULL, stderr=log,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tracker serve exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"tracker serve did not answer /healthz within {timeout:.0f} s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown handler, no flush, no goodbye."""
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

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# -- load --------------------------------------------------------------------------------------------------------

@dataclass
class Round:
    number: int
    kill_after: float = 0.0
    new: int = 0
    requests: int = 0
    acked_new: int = 0
    transport_errors: int = 0
    unavailable: int = 0  # 503: the server said retry later; unacknowledged
    resent: int = 0
    resent_answers: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    died_early: bool = False
    stored: int = 0  # this round's new events found in the database after the kill
    check: Check | None = None
    drained_in: float | None = None  # the final retry: seconds until every stored event was applied


def client(server: Server) -> httpx.AsyncClient:
    """One client, one keep-alive connection, per worker: a shared pool costs more CPU than the server does.
    Plain HTTP on loopback, so no TLS context (building one per client costs ~20 ms)."""
    return httpx.AsyncClient(base_url=server.url, timeout=httpx.Timeout(15), verify=False,
                             limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))


async def send(http: httpx.AsyncClient, event: Event, retry: bool, stats: Round) -> bool:
    """POST one event; record the answer. Returns False on a transport error (the server is gone)."""
    stats.requests += 1
    try:
        response = await http.post("/webhooks/blaaiz", content=event.body, headers=signed_headers(event.body))
    except httpx.TransportError:
        stats.transport_errors += 1
        return False
    if response.status_code == 503:
        stats.unavailable += 1
        return True
    status = response.json().get("status") if response.status_code == 200 else None
    allowed = ("accepted", "duplicate") if retry else ("accepted",)
    if status not in allowed:
        stats.unexpected.append(f"{event.event_id}: {response.status_code} {response.text[:200]}")
        return True
    event.answers.append(status)
    if retry:
        stats.resent_answers[status] += 1
    if not event.acked:
        event.acked_row = int(response.json()["event"])
        if not retry:
            stats.acked_new += 1
    return True


async def drive(server: Server, stats: Round, events: list[Event], retries: list[Event], tag: str,
                concurrency: int, kill_after: float) -> None:
    """Send ``retries`` first, then new events, from ``concurrency`` workers until the server is killed."""
    stop = asyncio.Event()
    pending = deque(retries)
    stats.resent = len(retries)

    async def worker() -> None:
        async with client(server) as http:
            while not stop.is_set():
                if pending:
                    event, retry = pending.popleft(), True
                else:
                    event, retry = make_event(tag, stats.number, len(events)), False
                    events.append(event)
                    stats.new += 1
                if not await send(http, event, retry, stats) and not stop.is_set():
                    await asyncio.sleep(0.01)  # the server is gone before we killed it; do not spin

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(kill_after)
    stats.died_early = not server.alive()
    server.kill()
    stop.set()
    await asyncio.gather(*tasks)


# -- the check ---------------------------------------------------------------------------------------------------

@dataclass
class Check:
    stored: Counter[str]  # event id -> rows stored as an original (duplicate_of IS NULL)
    missing: list[str]  # acknowledged, not stored as an original
    doubled: list[str]  # stored more than once as an original
    lost_rows: list[str]  # the row a 2xx named is gone, or belongs to another event
    strangers: list[str]  # stored originals nobody sent
    unapplied: list[str] = field(default_factory=list)  # settled check: stored, not applied (or not ``applied``)
    moved_twice: list[str] = field(default_factory=list)  # settled check: an event or customer with 2+ moves

    @property
    def ok(self) -> bool:
        return not (self.missing or self.doubled or self.lost_rows or self.strangers or self.unapplied
                    or self.moved_twice)


def check(database_url: str, events: list[Event], required: list[Event], settled: bool = False) -> Check:
    """What the database holds. ``settled``: the applier has had its time, so every stored event must also have
    been applied exactly once."""
    engine = make_engine(database_url)
    unapplied: list[str] = []
    moved_twice: list[str] = []
    try:
        with engine.connect() as conn:
            if settled:
                unapplied = [f"{row.event_id} ({row.outcome})" for row in conn.execute(text(
                    "SELECT event_id, outcome FROM inbound_events WHERE provider = 'blaaiz' "
                    "AND (processed_at IS NULL OR outcome <> 'applied') ORDER BY id"))]
                moved_twice = [f"event {row[0]}: {row[1]} moves" for row in conn.execute(text(
                    "SELECT e.event_id, count(*) FROM history h JOIN inbound_events e ON e.id = h.event_id "
                    "GROUP BY e.event_id HAVING count(*) > 1"))]
                moved_twice += [f"customer {row[0]}: {row[1]} moves" for row in conn.execute(text(
                    "SELECT customer_id, count(*) FROM history WHERE source = 'webhook' GROUP BY customer_id "
                    "HAVING count(*) > 1"))]
            originals = conn.execute(text(
                "SELECT event_id, count(*) FROM inbound_events WHERE provider = 'blaaiz' AND duplicate_of IS NULL "
                "GROUP BY event_id")).all()
            rows = {row.id: row for row in conn.execute(text(
                "SELECT e.id, e.event_id, o.event_id AS original_event_id FROM inbound_events e "
                "LEFT JOIN inbound_events o ON o.id = e.duplicate_of WHERE e.provider = 'blaaiz'"))}
    finally:
        engine.dispose()
    stored: Counter[str] = Counter({str(row[0]): int(row[1]) for row in originals})
    sent = {event.event_id for event in events}
    lost_rows = []
    for event in events:
        if event.acked_row is not None:
            row = rows.get(event.acked_row)
            if row is None or event.event_id not in (row.event_id, row.original_event_id):
                lost_rows.append(f"{event.event_id} (row {event.acked_row})")
    return Check(
        stored=stored,
        missing=[event.event_id for event in required if stored[event.event_id] == 0],
        doubled=sorted(event_id for event_id, n in stored.items() if n > 1),
        lost_rows=lost_rows,
        strangers=sorted(set(stored) - sent),
        unapplied=unapplied,
        moved_twice=moved_twice,
    )


# -- one backend ---------------------------------------------------------------------------------------------

@dataclass
class Report:
    backend: str
    rounds: list[Round]
    events: list[Event]
    final_round: Round
    final: Check  # after the final retry: every event sent, stored exactly once

    @property
    def checks(self) -> list[Check]:
        return [r.check for r in self.rounds if r.check is not None] + [self.final]

    @property
    def after_rounds(self) -> Check:
        """The check after the last kill, before the final retry."""
        last = self.rounds[-1].check if self.rounds else None
        return last if last is not None else self.final

    @property
    def unexpected(self) -> list[str]:
        return [u for r in [*self.rounds, self.final_round] for u in r.unexpected]

    @property
    def still_unacknowledged(self) -> list[str]:
        return [event.event_id for event in self.events if not event.acked]

    @property
    def missing(self) -> list[str]:
        return sorted({m for c in self.checks for m in c.missing})

    @property
    def doubled(self) -> list[str]:
        return sorted({d for c in self.checks for d in c.doubled})

    @property
    def lost_rows(self) -> list[str]:
        return sorted({r for c in self.checks for r in c.lost_rows})

    @property
    def strangers(self) -> list[str]:
        return sorted({s for c in self.checks for s in c.strangers})

    @property
    def passed(self) -> bool:
        return (all(c.ok for c in self.checks) and not self.unexpected and not self.still_unacknowledged
                and bool(self.rounds))


def run_backend(backend: str, database_url: str, workdir: Path, *, rounds: int, concurrency: int,
                min_load: float, max_load: float, resend: float, rng: random.Random,
                out: TextIO = sys.stdout) -> Report:
    tag = uuid.uuid4().hex[:6]
    log = workdir / f"server-{backend}.log"
    events: list[Event] = []
    done: list[Round] = []
    for number in range(1, rounds + 1):
        stats = Round(number, kill_after=rng.uniform(min_load, max_load))
        waiting = [event for event in events if not event.acked]
        retries = rng.sample(waiting, round(len(waiting) * resend))
        server = Server(database_url, log)
        server.start()
        asyncio.run(drive(server, stats, events, retries, tag, concurrency, stats.kill_after))
        if stats.died_early:
            stats.unexpected.append(f"round {number}: the server died before it was killed:\n{server.log_tail()}")
        # The server is dead: what is in the database now is what survived.
        stats.check = check(database_url, events, [event for event in events if event.acked])
        stats.stored = sum(1 for e in events if e.round == number and stats.check.stored[e.event_id])
        done.append(stats)
        print(f"  round {number:2d}: killed after {stats.kill_after:.2f} s; {stats.new} new events, "
              f"{stats.acked_new} acknowledged, {stats.stored} stored; {stats.resent} re-sent; "
              f"check {'ok' if stats.check.ok else 'FAILED'}", file=out, flush=True)

    # Final retry: every event still unacknowledged is sent again, as the provider would, until answered.
    final_round = Round(0)
    server = Server(database_url, log)
    server.start()
    try:
        asyncio.run(resend_all(server, final_round, [event for event in events if not event.acked], concurrency))
        final_round.drained_in = wait_applied(database_url)
    finally:
        server.stop()
    final = check(database_url, events, events, settled=True)
    return Report(backend, done, events, final_round, final)


def wait_applied(database_url: str, timeout: float = 60.0) -> float | None:
    """Seconds until the running server's applier has applied every stored event; None if not within
    ``timeout`` (the settled check then names what is left)."""
    engine = make_engine(database_url)
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout:
            with engine.connect() as conn:
                if not conn.execute(text("SELECT count(*) FROM inbound_events WHERE processed_at IS NULL")).scalar():
                    return time.monotonic() - started
            time.sleep(0.05)
        return None
    finally:
        engine.dispose()


async def resend_all(server: Server, stats: Round, retries: list[Event], concurrency: int) -> None:
    stats.resent = len(retries)
    queue = deque(retries)

    async def worker() -> None:
        async with client(server) as http:
            while queue:
                event = queue.popleft()
                if not await send(http, event, True, stats):
                    stats.unexpected.append(f"{event.event_id}: transport error with the server up")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


# -- printing ------------------------------------------------------------------------------------------------------

def print_report(report: Report, out: TextIO = sys.stdout) -> None:
    print(f"\n{report.backend}: per round (stored = this round's new events in the database after the kill)",
          file=out)
    print(f"{'round':>5} {'killed at':>9} {'requests':>8} {'new':>6} {'acked':>6} {'unacked':>7} {'stored':>6} "
          f"{'stored,unacked':>14} {'re-sent':>7} {'->accepted':>10} {'->duplicate':>11} {'check':>5}", file=out)
    for r in report.rounds:
        ok = "ok" if r.check is not None and r.check.ok else "FAIL"
        print(f"{r.number:>5} {r.kill_after:>8.2f}s {r.requests:>8} {r.new:>6} {r.acked_new:>6} "
              f"{r.new - r.acked_new:>7} {r.stored:>6} {r.stored - r.acked_new:>14} {r.resent:>7} "
              f"{r.resent_answers['accepted']:>10} {r.resent_answers['duplicate']:>11} {ok:>5}", file=out)
    final = report.final_round
    a = report.after_rounds
    sent = len(report.events)
    acked = sum(1 for e in report.events if e.acked) - final.resent_answers.total()
    requests = sum(r.requests for r in report.rounds)
    print(f"totals after {len(report.rounds)} kills: sent {sent} events ({requests} requests), acknowledged "
          f"{acked}, stored {len(a.stored)} ({len(a.stored) - acked} stored but unacknowledged: allowed)", file=out)
    print(f"  missing acknowledged:   {len(report.missing)} (must be 0)", file=out)
    print(f"  duplicated originals:   {len(report.doubled)} (must be 0)", file=out)
    print(f"  acknowledged rows gone: {len(report.lost_rows)} (must be 0)", file=out)
    print(f"  unexpected answers:     {len(report.unexpected)} (must be 0)", file=out)
    print(f"final retry: the {final.resent} events still unacknowledged re-sent to a restarted server: "
          f"{final.resent_answers['accepted']} accepted (had been lost), {final.resent_answers['duplicate']} "
          f"duplicate (had been stored, only the answer was lost)", file=out)
    print(f"  then: {len(report.final.stored)} of {sent} sent events stored, missing {len(report.final.missing)}, "
          f"duplicated {len(report.final.doubled)}, unanswered {len(report.still_unacknowledged)} (must be "
          f"{sent}, 0, 0, 0)", file=out)
    drained = "not within 60 s" if final.drained_in is None else f"{final.drained_in:.2f} s"
    print(f"  applied: the backlog emptied {drained} after the final retry; not applied {len(report.final.unapplied)}, "
          f"moved twice {len(report.final.moved_twice)} (must be 0, 0)", file=out)
    for label, items in (("missing", report.missing), ("duplicated", report.doubled),
                         ("row gone", report.lost_rows), ("stored, never sent", report.strangers),
                         ("unexpected", report.unexpected), ("unanswered", report.still_unacknowledged),
                         ("not applied", report.final.unapplied), ("moved twice", report.final.moved_twice)):
        for item in items[:10]:
            print(f"    {label}: {item}", file=out)
    print(f"{report.backend}: {'PASS' if report.passed else 'FAIL'}", file=out, flush=True)


# -- databases -------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def database(backend: str, workdir: Path, keep: bool, out: TextIO = sys.stdout) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'kill9.db'}"  # tracker serve upgrades SQLite at start
        return
    import psycopg

    name = f"tracker_kill9_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    try:
        subprocess.run([sys.executable, "-m", "tracker.cli", "db", "upgrade"], env=tracker_env(url), check=True,
                       stdout=subprocess.DEVNULL)
        yield url
    finally:
        if keep:
            print(f"kept database {url}", file=out)
        else:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(backend: str, *, rounds: int = 10, concurrency: int = 32, min_load: float = 0.5, max_load: float = 2.0,
        resend: float = 0.5, seed: int | None = None, keep: bool = False, out: TextIO = sys.stdout) -> Report:
    """Run the whole exercise on one backend in a fresh database, print it, and return the report."""
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix=f"kill9-{backend}-"))
    try:
        with database(backend, workdir, keep, out) as url:
            shown = url if backend == "postgres" else "a new SQLite file"
            print(f"{backend}: {rounds} rounds of kill -9 under webhook load, concurrency {concurrency}, "
                  f"on {shown}", file=out, flush=True)
            report = run_backend(backend, url, workdir, rounds=rounds, concurrency=concurrency, min_load=min_load,
                                 max_load=max_load, resend=resend, rng=rng, out=out)
        print_report(report, out)
        return report
    finally:
        if keep:
            print(f"kept {workdir}", file=out)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--min-load", type=float, default=0.5, help="seconds of load before the kill, at least")
    parser.add_argument("--max-load", type=float, default=2.0, help="seconds of load before the kill, at most")
    parser.add_argument("--resend", type=float, default=0.5,
                        help="part of the unacknowledged events re-sent after each restart (0-1)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the databases and server logs")
    args = parser.parse_args(argv)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    results = {}
    for backend in backends:
        report = run(backend, rounds=args.rounds, concurrency=args.concurrency, min_load=args.min_load,
                     max_load=args.max_load, resend=args.resend, seed=args.seed, keep=args.keep)
        results[backend] = report.passed
        print()
    verdict = all(results.values())
    print("kill9: " + ", ".join(f"{b} {'PASS' if ok else 'FAIL'}" for b, ok in results.items())
          + f" => {'PASS' if verdict else 'FAIL'}")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
