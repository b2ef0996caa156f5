"""bench/ingest: signed Blaaiz webhooks into ``tracker serve``: acknowledged once stored, applied after.

The tracker answers ``POST /webhooks/blaaiz`` once the delivery is stored in the inbox (one group-committed
INSERT), and an applier thread in the same process applies the stored rows afterwards (it runs also under
``--no-worker``). This bench measures both halves, in one process with its applier running, as an operator
would start it (``tracker serve --no-worker``, TRACKER_LOG_LEVEL=warning). Three modes:

``bench/ingest`` (closed loop, both backends by default). For each backend: the bare endpoint
(bench/bare_app.py: reads the body, answers a small JSON 200, served by uvicorn with the same settings), then
a fresh database (``tracker db upgrade``; PostgreSQL: a database ``bench_ingest_<random>``, dropped
afterwards) seeded as a service that has run for a while (10,000 customers in a mix of states, an inbox of
100,000 earlier deliveries, planner statistics; the seed written out before measuring), and
realistic status webhooks for those customers (reviews starting, rejections with reasons, approvals,
re-sent statuses, the odd contradiction; 3 % for customers never seen), with wrk, 32 connections, a
warm-up then a measured run (the same wrk settings for bare and tracker). After the load it waits for the
applier to drain the backlog and reports the apply rate of that drain and the time from the end of the load
(wrk's exit, right after its last acknowledgement) to the last event applied. Targets:
  throughput   acknowledged (2xx) webhooks/s >= 0.35 x bare on SQLite, >= 0.25 x bare on PostgreSQL
  latency      p99 <= 25 ms (wrk: request written -> answer read)
  errors       zero non-2xx, zero socket errors or timeouts
  stored once  every acknowledged event is in the inbox once: stored >= acked (stored may exceed acked by
               the requests in flight when wrk stopped), no event stored as a duplicate, no 2xx "duplicate"
  applied      every stored event applied (processed_at set; outcome not error or rejected)
  apply rate   >= 3,000 events/s while draining the backlog left at the end of the load. When the applier
               kept up with the load (a backlog under 3,000 events, too short to time), the bench stores
               20,000 events itself through the tracker's own inbox INSERT (tracker.inbox.store.store_now,
               tracker.db.inbox.store; no HTTP) and times their drain instead; the output says which.
It also prints the CPU per webhook of the server process (which holds SQLite) and of PostgreSQL's backends
for the bench database, over the load and over load + drain, with its ratio to bare's CPU per request; the
lag (below) under the load; and the applier's batches (rows sharing a processed_at) with the time between
their starts.

``bench/ingest --steady``: an even pace, 1,000 webhooks/s for 60 s by default (--rate, --duration), sent by
wrk with bench/webhook_paced.lua over 32 keep-alive connections (--pace-connections): hey paces but cannot
sign each request differently, and wrk2 is not packaged. The bare endpoint gets the same pace (20 s) as the
baseline of the acknowledgement latency and of the pacer's own CPU. Targets: lag p99 <= 100 ms, where lag =
processed_at - received_at of each event, read from the database after the run. received_at is stamped when
the request is handled, before its INSERT, so the lag is store + wait + apply; processed_at is the applier's
clock once its batch has claimed the rows, so the lag leaves out the rest of that transaction (a negative lag
would mean a clock read in the wrong place: such lags are counted and printed).
Also: the pace kept (>= 99 % of the rate, else the run is invalid), zero non-2xx, stored
once, all applied. The pacer's CPU is printed as wrk's; sends that left late because every connection was
still waiting for an answer are counted (slip), not hidden.

``bench/ingest --soak``: 5 minutes (--duration 300) on PostgreSQL (--backend sqlite for SQLite) against the
same 5,000 customers over and over, most events re-sent statuses that move nothing, each with a fresh event
id and updated_at (about 3 % move a customer), closed loop with wrk, 32 connections, in 60 s slices (so the
per-minute figures are wrk's own, and each slice has its own pool, signed for its minute: the tracker
accepts a timestamp 300 s either side). Targets: the last minute's acknowledged throughput >= 0.9 x the
first minute's; the backlog (rows with processed_at IS NULL) back to zero within 30 s of the end; zero
non-2xx; stored once; all applied. Per minute it also prints the CPU per webhook and the server's RSS, and at
the end the inbox table's size, dead rows and vacuums.

wrk has no HMAC, so every request is generated and signed here beforehand and bench/webhook.lua replays each
exactly once: each has its own event_id and content, so nothing is a duplicate; a run whose pool ran out
is invalid. wrk runs with 1 thread: the machine may have only 2 cores, and every cycle wrk takes is one the
server does not get. Only 127.0.0.1 is loaded; every request loop is bounded in count and time.

    bench/ingest --backend both --duration 10
    bench/ingest --steady --backend both
    bench/ingest --soak
Exit status 0 unless --strict is given and a target fails (or a run is invalid).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package: find ingest_load beside us
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import itertools

from ingest_load import (
    HERE,
    PG_ADMIN,
    SECRET,
    CpuWatch,
    Feed,
    Inbox,
    Load,
    RepeatFeed,
    Server,
    Stored,
    clean_env,
    create_pg_database,
    drop_pg_database,
    inbox_table_note,
    metric_sums,
    postgres_backends,
    rss_mb,
    run_wrk,
    seed_database,
    settle,
    sign_pool,
    upgrade,
    write_pool,
)

TARGET_RATIO = {"sqlite": 0.35, "postgres": 0.25}
TARGET_P99_MS = 25.0
TARGET_APPLY_RATE = 3000.0
TARGET_LAG_P99_MS = 100.0
TARGET_SOAK_KEEP = 0.9
TARGET_SOAK_DRAIN_S = 30.0
MIN_TIMED_BACKLOG = 3000  # a drain shorter than a second at the target rate is not timed
STORED_BACKLOG = 20_000
PACE_KEPT = 0.99


# --- results ----------------------------------------------------------------------------------------------

@dataclass
class Row:
    """One target's figures (``cells``, by column), its checks (each PASS or FAIL) and notes."""

    target: str
    cells: dict[str, str] = field(default_factory=dict)
    checks: list[tuple[str, str, bool]] = field(default_factory=list)  # (what, figure vs target, passed)
    notes: list[str] = field(default_factory=list)
    judged: bool = True

    def check(self, what: str, figure: str, passed: bool) -> None:
        self.checks.append((what, figure, passed))

    @property
    def failed(self) -> bool:
        return any(not passed for _, _, passed in self.checks)


def x(value: float, base: float) -> str:
    """A ratio to a baseline, as printed after a figure."""
    return f"{value / base:.2f}x" if base else "-"


def table(rows: list[Row], columns: list[str]) -> str:
    lines = [[*columns, "result"]]
    for row in rows:
        result = ("FAIL" if row.failed else "PASS") if row.judged else "ref"
        lines.append([row.target, *(row.cells.get(c, "-") for c in columns[1:]), result])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join([line[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(line[1:], widths[1:],
                                                                                         strict=True))]))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def report(rows: list[Row], columns: list[str], legend: list[str]) -> bool:
    print()
    print(table(rows, columns))
    print()
    for row in rows:
        for what, figure, passed in row.checks:
            print(f"{row.target}: {'PASS' if passed else 'FAIL'} {what}: {figure}")
    print()
    for row in rows:
        for note in row.notes:
            print(f"{row.target}: {note}")
    print()
    for line in legend:
        print(line)
    failed = any(row.failed for row in rows)
    print("RESULT:", "FAIL" if failed else "PASS")
    return failed


def cpu_cells(row: Row, cpu: dict[str, float], events: int, seconds: float, label: str,
              bare_us: float | None = None) -> None:
    """A note with each process group's CPU per event (and cores), against bare's server CPU per request."""
    parts = []
    for name, used in cpu.items():
        per = used / max(events, 1) * 1e6
        ratio = f" ({x(per, bare_us)} bare's {bare_us:.0f} us)" if bare_us and name != "wrk" else ""
        parts.append(f"{name} {per:.0f} us{ratio} = {used / seconds:.2f} cores" if seconds else f"{name} {per:.0f}")
    if "database" in cpu:
        per = (cpu["server"] + cpu["database"]) / max(events, 1) * 1e6
        parts.append(f"server + database {per:.0f} us" + (f" ({x(per, bare_us)} bare's)" if bare_us else ""))
    row.notes.append(f"CPU per webhook, {label}: " + ", ".join(parts))


def check_stored(row: Row, load: Load, stored: Stored) -> None:
    """Every acknowledged event stored once, and applied."""
    extra = stored.stored - load.ok
    row.check("stored once", f"acked {load.ok}, stored {stored.stored} (in flight at wrk's stop "
              f"{load.in_flight}), stored as duplicates {stored.duplicates}, answered duplicate "
              f"{load.answers['duplicate']}, repeated ids {stored.repeated_ids}",
              0 <= extra <= load.in_flight + load.non_2xx and not stored.duplicates
              and not load.answers["duplicate"] and not stored.repeated_ids)
    row.check("applied", f"{stored.applied} of {stored.stored} (not yet {stored.unapplied}, error or rejected "
              f"{stored.failed})", stored.applied == stored.stored)
    row.check("errors", f"{load.non_2xx} non-2xx (status {load.codes or '-'}), {load.socket_errors} socket "
              "errors or timeouts", not load.non_2xx and not load.socket_errors)
    if load.wrapped:
        row.check("valid run", f"the request pool ran out: {load.wrapped} repeats were sent", False)


def outcome_note(stored: Stored) -> str:
    return "outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(stored.outcomes.items()))


def lag_note(stored: Stored, what: str) -> str:
    negative = sum(1 for lag in stored.lags_ms if lag < 0)
    return (f"{what}: p50 {stored.lag(0.5):.1f} ms, p90 {stored.lag(0.9):.1f}, p99 {stored.lag(0.99):.1f}, "
            f"max {max(stored.lags_ms, default=0):.1f}; {negative} negative (processed_at before received_at)")


def server_notes(row: Row, server: Server, impl: str) -> None:
    metrics = server.metrics()
    batch = metric_sums(metrics, "tracker_inbox_batch_size")
    applied = metric_sums(metrics, "tracker_inbox_applied_total")
    row.notes.append(f"server {impl}; tracker_inbox_batch_size: {batch.get('_count', 0):.0f} commits, "
                     f"{batch.get('_sum', 0) / max(batch.get('_count', 0), 1):.1f} deliveries per commit; "
                     "tracker_inbox_applied: " + ", ".join(f"{k.split(chr(34))[1]} {v:.0f}" for k, v in
                                                           applied.items() if '"' in k))
    for line in server.log_tail(5):
        row.notes.append(f"server log: {line[:300]}")


# --- databases and servers --------------------------------------------------------------------------------

@contextlib.contextmanager
def database(backend: str, workdir: Path, args: argparse.Namespace, rng: random.Random
             ) -> Iterator[tuple[str, dict[str, str]]]:
    """A fresh, seeded database: its URL and each customer's provider status. PostgreSQL's is dropped after."""
    pg_url = None
    if backend == "postgres":
        database_url = pg_url = create_pg_database(args.postgres_url)
    else:
        database_url = f"sqlite:///{workdir / f'tracker-{int(time.time() * 1000)}.db'}"
    try:
        upgrade(database_url)
        statuses = seed_database(database_url, args.customers, args.past_events, rng)
        settle(database_url)
        yield database_url, statuses
    finally:
        if pg_url is not None and not args.keep:
            drop_pg_database(args.postgres_url, pg_url)
        elif pg_url is not None:
            print(f"  database kept: {pg_url}")


@contextlib.contextmanager
def tracker(backend: str, database_url: str, workdir: Path) -> Iterator[Server]:
    env = clean_env(TRACKER_DATABASE_URL=database_url, TRACKER_BLAAIZ_WEBHOOK_SECRETS=SECRET,
                    TRACKER_LOG_LEVEL="warning")
    server = Server(f"tracker-{backend}", [sys.executable, "-m", "tracker.cli", "serve", "--no-worker"], env)
    server.start(workdir)
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def seeded_tracker(backend: str, workdir: Path, args: argparse.Namespace, rng: random.Random,
                   feed_class: type[Feed] = Feed) -> Iterator[tuple[str, Server, Inbox, Feed, str]]:
    """A seeded database with ``tracker serve`` on it: (database URL, server, the bench's view of its inbox, a
    feed of webhooks for its customers, the server's HTTP implementation)."""
    with database(backend, workdir, args, rng) as (database_url, statuses), \
            tracker(backend, database_url, workdir) as server:
        inbox = Inbox(database_url)
        try:
            yield (database_url, server, inbox, feed_class(statuses, rng, datetime.now(UTC) - timedelta(days=1)),
                   server.implementation())
        finally:
            inbox.close()


@contextlib.contextmanager
def bare_server(workdir: Path, label: str) -> Iterator[Server]:
    server = Server(f"bare-{label}", [sys.executable, str(HERE / "bare_app.py")], clean_env())
    server.start(workdir)
    try:
        yield server
    finally:
        server.stop()


def watch_of(server: Server, backend: str, database_url: str) -> CpuWatch:
    assert server.process is not None
    pid = server.process.pid
    groups = {"server": lambda: [pid]}
    if backend == "postgres":
        groups["database"] = lambda: postgres_backends(database_url)
    return CpuWatch(groups)


# --- closed loop ------------------------------------------------------------------------------------------

CLOSED_COLUMNS = ["target", "acked/s", "x bare", "p50 ms", "p99 ms", "x bare p99", "non-2xx", "acked", "stored",
                  "applied", "backlog at end", "ack->applied s", "apply/s"]


def closed_bare(workdir: Path, args: argparse.Namespace, label: str) -> tuple[Row, Load]:
    feed = Feed({f"cus_{n:06d}": "PENDING" for n in range(args.customers)}, random.Random(7), datetime.now(UTC))
    with bare_server(workdir, label) as server:
        impl = server.implementation()
        if args.warmup:
            write_pool(feed, "w", int(8000 * args.warmup * 1.5) + 2000, args.threads, workdir / "bare-w")
            run_wrk(server.url, workdir / "bare-w", args.warmup, args.connections, args.threads)
        # The pool may wrap here: the bare endpoint does not care whether it saw a body before.
        write_pool(feed, "m", int(8000 * args.duration * 1.5) + 5000, args.threads, workdir / "bare-m")
        assert server.process is not None
        pid = server.process.pid
        load = run_wrk(server.url, workdir / "bare-m", args.duration, args.connections, args.threads,
                       CpuWatch({"server": lambda: [pid]}))
    row = Row(f"bare ({label})", judged=False)
    row.cells = {"acked/s": f"{load.rps:.0f}", "x bare": "1.00", "p50 ms": f"{load.p50_ms:.2f}",
                 "p99 ms": f"{load.p99_ms:.2f}", "non-2xx": str(load.non_2xx + load.socket_errors),
                 "acked": str(load.ok)}
    cpu_cells(row, load.cpu, load.ok, load.seconds, "during the load")
    row.notes.insert(0, f"server {impl}")
    return row, load


def closed_tracker(backend: str, workdir: Path, args: argparse.Namespace, bare: Load) -> Row:
    row = Row(f"tracker-{backend}")
    rng = random.Random(11)
    bare_us = bare.cpu["server"] / max(bare.ok, 1) * 1e6
    with seeded_tracker(backend, workdir, args, rng) as (database_url, server, inbox, feed, impl):
        expected = bare.rps
        if args.warmup:
            write_pool(feed, "w", int(expected * args.warmup * 1.5) + 2000, args.threads, workdir / "w")
            warm = run_wrk(server.url, workdir / "w", args.warmup, args.connections, args.threads)
            expected = min(expected, 3 * warm.rps)
            if inbox.wait_applied(120) is None:
                row.notes.append("the warm-up's events were not all applied within 120 s")
        write_pool(feed, "m", int(expected * args.duration * 1.5) + 5000, args.threads, workdir / "m")
        time.sleep(0.5)
        watch = watch_of(server, backend, database_url)
        load = run_wrk(server.url, workdir / "m", args.duration, args.connections, args.threads, watch)
        backlog0, newest0 = inbox.counts()
        drained_at = inbox.wait_applied(max(120.0, backlog0 / 500))
        cpu_all = watch.used()
        all_seconds = (drained_at or time.time()) - load.started
        _, newest1 = inbox.counts()
        drained = backlog0 + newest1 - newest0  # rows applied after the load, those stored after it included
        drain_s = drained_at - load.ended if drained_at else None
        rate_from = "the drain after the load"
        rate = drained / drain_s if drain_s and drain_s > 0 else 0.0
        if drained_at is not None and backlog0 < MIN_TIMED_BACKLOG:
            inbox.store_backlog(feed, "b", args.backlog)
            stored_at = time.time()
            emptied = inbox.wait_applied(max(120.0, args.backlog / 500))
            b = inbox.phase("b")
            started = b.first_processed.timestamp() if b.first_processed else stored_at
            rate = b.applied / (emptied - started) if emptied and emptied > started else 0.0
            rate_from = (f"a backlog of {args.backlog} events the bench stored itself (the load left only "
                         f"{backlog0}); {b.applied} applied from the applier's first batch in "
                         f"{(emptied or 0) - started:.2f} s")
        server_notes(row, server, impl)
        stored = inbox.phase("m")
        warm_stored = inbox.phase("w") if args.warmup else None
    ratio = load.rps / bare.rps if bare.rps else 0.0
    row.cells = {"acked/s": f"{load.rps:.0f}", "x bare": f"{ratio:.2f}", "p50 ms": f"{load.p50_ms:.2f}",
                 "p99 ms": f"{load.p99_ms:.2f}", "x bare p99": x(load.p99_ms, bare.p99_ms),
                 "non-2xx": str(load.non_2xx + load.socket_errors), "acked": str(load.ok),
                 "stored": str(stored.stored), "applied": str(stored.applied), "backlog at end": str(backlog0),
                 "ack->applied s": f"{drain_s:.2f}" if drain_s is not None else "never", "apply/s": f"{rate:.0f}"}
    target = TARGET_RATIO[backend]
    row.check("throughput", f"{load.rps:.0f} webhooks/s = {ratio:.2f} x bare's {bare.rps:.0f} (target >= {target})",
              ratio >= target)
    row.check("latency", f"p99 {load.p99_ms:.1f} ms = {x(load.p99_ms, bare.p99_ms)} bare's {bare.p99_ms:.1f} "
              f"(target <= {TARGET_P99_MS:g} ms)", load.p99_ms <= TARGET_P99_MS)
    check_stored(row, load, stored)
    row.check("apply rate", f"{rate:.0f} events/s = {x(rate, load.rps)} the acknowledged rate, from {rate_from} "
              f"(target >= {TARGET_APPLY_RATE:.0f})", rate >= TARGET_APPLY_RATE)
    if warm_stored is not None and (warm_stored.applied < warm_stored.stored or warm_stored.duplicates):
        row.check("warm-up", f"stored {warm_stored.stored}, applied {warm_stored.applied}, duplicates "
                  f"{warm_stored.duplicates}", False)
    last = stored.last_processed.timestamp() - load.ended if stored.last_processed else float("nan")
    row.notes += [
        "end of the load (wrk's exit, after its last acknowledgement) -> backlog seen empty: "
        + (f"{drain_s:.3f} s" if drain_s is not None else "not within the timeout")
        + f"; -> last processed_at of the run {last:.3f} s; {backlog0} events waited at the end, {drained} "
        f"applied after it (rate {drained / drain_s if drain_s else 0:.0f}/s)",
        lag_note(stored, "lag processed_at - received_at under the closed-loop load (the backlog's wait included)"),
        stored.batch_note(),
        outcome_note(stored),
        f"wrk sent {load.sent}, completed {load.completed}, in flight at stop {load.in_flight}; 2xx answers "
        f"accepted {load.answers['accepted']}, ignored {load.answers['ignored']}, duplicate "
        f"{load.answers['duplicate']}",
    ]
    cpu_cells(row, load.cpu, load.ok, load.seconds, "during the load (per acknowledged)", bare_us)
    cpu_cells(row, cpu_all, stored.stored, all_seconds, "load + drain (per stored event, applying included)",
              bare_us)
    if backend == "sqlite":
        row.notes.append("SQLite runs inside the server process: its CPU is the server's")
    return row


def run_closed(args: argparse.Namespace, backends: list[str], workdir: Path) -> bool:
    rows: list[Row] = []
    for backend in backends:
        # The bare reference is measured next to each tracker run, so both see the same machine load.
        print(f"  bare endpoint ({backend} pass) ...", flush=True)
        bare_row, bare = closed_bare(workdir, args, backend)
        rows.append(bare_row)
        print(f"  tracker on {backend} ...", flush=True)
        rows.append(closed_tracker(backend, workdir, args, bare))
    return report(rows, CLOSED_COLUMNS, [
        f"targets: acked/s >= {TARGET_RATIO['sqlite']} x bare (SQLite), {TARGET_RATIO['postgres']} x bare "
        f"(PostgreSQL); p99 <= {TARGET_P99_MS:g} ms; zero non-2xx; every acked event stored once and applied; "
        f"apply rate >= {TARGET_APPLY_RATE:.0f} events/s.",
        "acked = 2xx answers wrk received; stored = inbox rows of the measured run, which may exceed acked by the "
        "requests in flight when wrk stopped; backlog at end = rows with processed_at IS NULL when wrk exited; "
        "ack->applied s = from wrk's exit (right after its last acknowledgement) until the bench saw the backlog "
        "empty (polled every 20 ms); apply/s = the rate its check names (the drain's, or a stored backlog's).",
    ])


# --- steady pace ------------------------------------------------------------------------------------------

STEADY_COLUMNS = ["target", "rate/s", "slip p99 ms", "ack p50 ms", "ack p99 ms", "x bare p99", "non-2xx", "acked",
                  "stored", "applied", "lag p50 ms", "lag p99 ms"]


def paced(server: Server, feed: Feed, phase: str, seconds: float, args: argparse.Namespace, workdir: Path,
          watch: CpuWatch | None = None) -> Load:
    count = int(args.rate * seconds)
    write_pool(feed, phase, count, 1, workdir / f"{server.name}-{phase}")
    return run_wrk(server.url, workdir / f"{server.name}-{phase}", seconds + 3, args.pace_connections, 1, watch,
                   pace=(args.rate, count))


def steady_cells(row: Row, load: Load, bare: Load | None) -> None:
    pace = load.pace or {}
    row.cells.update({"rate/s": f"{pace.get('rate', 0):.0f}", "slip p99 ms": f"<={pace.get('slip_p99_ms', 0)}",
                      "ack p50 ms": f"{load.p50_ms:.2f}", "ack p99 ms": f"{load.p99_ms:.2f}",
                      "x bare p99": x(load.p99_ms, bare.p99_ms) if bare else "1.00",
                      "non-2xx": str(load.non_2xx + load.socket_errors), "acked": str(load.ok)})


def pace_check(row: Row, load: Load, args: argparse.Namespace) -> None:
    pace = load.pace or {}
    kept = pace.get("rate", 0) >= PACE_KEPT * args.rate and pace.get("claimed", 0) >= args.rate * args.duration
    row.check("pace kept (else the run is invalid)",
              f"{pace.get('claimed', 0)} sent at {pace.get('rate', 0):.1f}/s = {x(pace.get('rate', 0), args.rate)} "
              f"the {args.rate:g}/s asked; late by > 1 ms {pace.get('late_1ms')}, > 5 ms {pace.get('late_5ms')}, "
              f"> 10 ms {pace.get('late_10ms')}, worst {pace.get('slip_max_ms', 0):.1f} ms", kept)


def steady_tracker(backend: str, workdir: Path, args: argparse.Namespace, bare: Load) -> Row:
    row = Row(f"tracker-{backend}")
    rng = random.Random(13)
    bare_us = bare.cpu["server"] / max(bare.ok, 1) * 1e6
    with seeded_tracker(backend, workdir, args, rng) as (database_url, server, inbox, feed, impl):
        paced(server, feed, "w", max(args.warmup, 5), args, workdir)
        if inbox.wait_applied(60) is None:
            row.notes.append("the warm-up's events were not all applied within 60 s")
        watch = watch_of(server, backend, database_url)
        load = paced(server, feed, "m", args.duration, args, workdir, watch)
        drained_at = inbox.wait_applied(60)
        cpu_all = watch.used()
        server_notes(row, server, impl)
        stored = inbox.phase("m")
    steady_cells(row, load, bare)
    row.cells.update({"stored": str(stored.stored), "applied": str(stored.applied),
                      "lag p50 ms": f"{stored.lag(0.5):.1f}", "lag p99 ms": f"{stored.lag(0.99):.1f}"})
    pace_check(row, load, args)
    late = (load.pace or {}).get("late_10ms", 0)
    if late > 0.01 * load.ok:
        row.notes.append(f"{late} sends ({late / max(load.ok, 1):.0%}) left > 10 ms late: all {args.pace_connections} "
                         "connections were waiting for answers at their instants, so the server saw those bunched "
                         "(the pacer itself used the CPU shown as wrk)")
    row.check("lag p99", f"{stored.lag(0.99):.1f} ms = {x(stored.lag(0.99), TARGET_LAG_P99_MS)} the target "
              f"(<= {TARGET_LAG_P99_MS:g} ms)", stored.applied > 0 and stored.lag(0.99) <= TARGET_LAG_P99_MS)
    check_stored(row, load, stored)
    last_lag = ((stored.last_processed - stored.last_received).total_seconds() * 1000
                if stored.last_processed and stored.last_received else float("nan"))
    row.notes += [
        lag_note(stored, "lag processed_at - received_at (store + wait + apply, up to the start of the applier's "
                 "transaction)"),
        stored.batch_note(),
        f"ack latency (wrk, send -> answer): p50 {load.p50_ms:.2f} ms ({x(load.p50_ms, bare.p50_ms)} bare), p99 "
        f"{load.p99_ms:.2f} ({x(load.p99_ms, bare.p99_ms)} bare), max {load.max_ms:.1f}",
        f"the last event received -> the last processed_at: {last_lag:.1f} ms; the backlog was "
        + ("empty when wrk exited (3 s after the schedule)" if drained_at and drained_at - load.ended < 0.1 else
           f"seen empty {drained_at - load.ended:.2f} s after wrk's exit" if drained_at else "not empty 60 s after"),
        outcome_note(stored),
    ]
    cpu_cells(row, load.cpu, load.ok, load.seconds, "during the paced run (wrk = the pacer)", bare_us)
    cpu_cells(row, cpu_all, stored.stored, (drained_at or time.time()) - load.started,
              "the run + drain (per stored event)", bare_us)
    return row


def run_steady(args: argparse.Namespace, backends: list[str], workdir: Path) -> bool:
    print(f"  bare endpoint at {args.rate:g}/s for {min(args.duration, 20):g} s ...", flush=True)
    feed = Feed({f"cus_{n:06d}": "PENDING" for n in range(args.customers)}, random.Random(7), datetime.now(UTC))
    with bare_server(workdir, "steady") as server:
        impl = server.implementation()
        assert server.process is not None
        pid = server.process.pid
        steady_args = argparse.Namespace(**{**vars(args), "duration": min(args.duration, 20)})
        bare = paced(server, feed, "m", steady_args.duration, steady_args, workdir, CpuWatch({"server": lambda: [pid]}))
    bare_row = Row("bare", judged=False)
    steady_cells(bare_row, bare, None)
    bare_row.notes.append(f"server {impl}")
    cpu_cells(bare_row, bare.cpu, bare.ok, bare.seconds, "paced (wrk = the pacer)")
    rows = [bare_row]
    for backend in backends:
        print(f"  tracker on {backend} at {args.rate:g}/s for {args.duration:g} s ...", flush=True)
        rows.append(steady_tracker(backend, workdir, args, bare))
    return report(rows, STEADY_COLUMNS, [
        f"targets: lag p99 <= {TARGET_LAG_P99_MS:g} ms at {args.rate:g} webhooks/s; pace kept (>= {PACE_KEPT} of "
        "the rate); zero non-2xx; every acked event stored once and applied.",
        "lag = processed_at - received_at per event, read from the database after the run. received_at is "
        "stamped when the request is handled, just before the store, so the lag is store + wait + apply delay; "
        "processed_at is the applier's clock at the start of its batch's transaction (its commit comes later).",
        "rate/s and slip = the pacer's (bench/webhook_paced.lua): instants claimed per second, and how late the "
        "last 1 % of sends left (1 ms buckets); ack = wrk's send -> answer latency.",
    ])


# --- soak -------------------------------------------------------------------------------------------------

SOAK_COLUMNS = ["minute", "acked/s", "x first", "p99 ms", "non-2xx", "acked", "stored", "applied in it",
                "backlog at end", "server us", "database us", "server RSS MB"]


def run_soak(args: argparse.Namespace, backend: str, workdir: Path) -> bool:
    slices = max(1, math.ceil(args.duration / args.slice))
    rng = random.Random(17)
    rows: list[Row] = []
    summary = Row(f"soak-{backend}")
    with seeded_tracker(backend, workdir, args, rng, RepeatFeed) as (database_url, server, inbox, feed, impl):
        assert server.process is not None
        pid = server.process.pid
        write_pool(feed, "w", int(8000 * args.warmup * 1.5) + 2000, args.threads, workdir / "soak-w")
        warm = run_wrk(server.url, workdir / "soak-w", args.warmup, args.connections, args.threads)
        inbox.wait_applied(120)
        per_slice = min(int(2 * warm.rps * args.slice) + 5000, 1_500_000)
        print(f"  warm-up {warm.rps:.0f} webhooks/s; generating {slices} x {per_slice} requests ...", flush=True)
        bodies = [[feed.event(f"s{k + 1}") for _ in range(per_slice)] for k in range(slices)]
        planned = time.time() + 10  # each slice signed for the middle of its minute (the tracker allows 300 s)
        for k in range(slices):
            sign_pool(bodies[k], args.threads, workdir / f"soak-{k + 1}", int(planned + k * (args.slice + 3)
                                                                              + args.slice / 2))
        del bodies
        loads: list[Load] = []
        for k in range(slices):
            print(f"  minute {k + 1} of {slices} ...", flush=True)
            watch = watch_of(server, backend, database_url)
            load = run_wrk(server.url, workdir / f"soak-{k + 1}", args.slice, args.connections, args.threads,
                           watch)
            loads.append(load)
            backlog, _ = inbox.counts()
            received, applied = inbox.window(load.started, load.ended)
            first = loads[0].rps
            row = Row(f"{k + 1}", judged=False)
            row.cells = {"acked/s": f"{load.rps:.0f}", "x first": x(load.rps, first), "p99 ms": f"{load.p99_ms:.1f}",
                         "non-2xx": str(load.non_2xx + load.socket_errors), "acked": str(load.ok),
                         "stored": str(received), "applied in it": str(applied), "backlog at end": str(backlog),
                         "server us": f"{load.cpu['server'] / max(load.ok, 1) * 1e6:.0f}",
                         "database us": f"{load.cpu['database'] / max(load.ok, 1) * 1e6:.0f}"
                         if "database" in load.cpu else "in server",
                         "server RSS MB": f"{rss_mb(pid):.0f}"}
            rows.append(row)
        end = loads[-1].ended
        drained_at = inbox.wait_applied(max(120.0, TARGET_SOAK_DRAIN_S * 2))
        server_notes(summary, server, impl)
        summary.notes.append(inbox_table_note(database_url))
        stored = [inbox.phase(f"s{k + 1}") for k in range(slices)]
    first, last = loads[0].rps, loads[-1].rps
    drain = drained_at - end if drained_at else None
    summary.cells = {"acked/s": f"{sum(ld.ok for ld in loads) / sum(ld.seconds for ld in loads):.0f}",
                     "first min/s": f"{first:.0f}", "last min/s": f"{last:.0f}", "x first": x(last, first),
                     "ack->empty s": f"{drain:.1f}" if drain is not None else "never"}
    summary.check("kept its pace", f"last minute {last:.0f} webhooks/s = {x(last, first)} the first's {first:.0f} "
                  f"(target >= {TARGET_SOAK_KEEP})", first > 0 and last >= TARGET_SOAK_KEEP * first)
    summary.check("backlog drained", (f"backlog empty {drain:.1f} s after the end" if drain is not None else
                                      "backlog not empty 120 s after the end")
                  + f" (target <= {TARGET_SOAK_DRAIN_S:g} s)", drain is not None and drain <= TARGET_SOAK_DRAIN_S)
    total = Load(completed=sum(ld.completed for ld in loads), sent=sum(ld.sent for ld in loads),
                 ok=sum(ld.ok for ld in loads), non_2xx=sum(ld.non_2xx for ld in loads),
                 codes=" ".join(ld.codes for ld in loads if ld.codes),
                 socket_errors=sum(ld.socket_errors for ld in loads), wrapped=sum(ld.wrapped for ld in loads),
                 answers={k: sum(ld.answers[k] for ld in loads) for k in ("accepted", "duplicate", "ignored")},
                 seconds=sum(ld.seconds for ld in loads), p50_ms=0, p90_ms=0,
                 p99_ms=max(ld.p99_ms for ld in loads), max_ms=max(ld.max_ms for ld in loads),
                 started=loads[0].started, ended=end)
    merged = Stored(stored=sum(s.stored for s in stored), duplicates=sum(s.duplicates for s in stored),
                    repeated_ids=sum(s.repeated_ids for s in stored), unapplied=sum(s.unapplied for s in stored),
                    failed=sum(s.failed for s in stored), outcomes={},
                    lags_ms=[lag for s in stored for lag in s.lags_ms], first_received=None, last_received=None,
                    last_processed=None, first_processed=None)
    for s in stored:
        for k, v in s.outcomes.items():
            merged.outcomes[k] = merged.outcomes.get(k, 0) + v
    check_stored(summary, total, merged)
    gaps = [b.started - a.ended for a, b in itertools.pairwise(loads)]
    summary.cells.update({"acked": str(total.ok), "stored": str(merged.stored), "applied": str(merged.applied)})
    summary.notes += [
        f"{total.ok} acknowledged in {total.seconds:.0f} s ({total.ok / total.seconds:.0f}/s), {len(loads)} wrk "
        f"slices, gaps between them {max(gaps, default=0):.1f} s at most (wrk loading its pool)",
        outcome_note(merged),
        lag_note(merged, "lag processed_at - received_at under the closed-loop load"),
        "per-minute stored = rows received in the slice's window; applied in it = rows whose processed_at falls "
        "in it; server us / database us = CPU per acknowledged webhook in the slice",
    ]
    print()
    print(table(rows, SOAK_COLUMNS))
    return report([summary], ["target", "acked/s", "first min/s", "last min/s", "x first", "ack->empty s", "acked",
                              "stored", "applied"], [
        f"targets: last minute >= {TARGET_SOAK_KEEP} x the first minute's acked/s; backlog (processed_at IS NULL) "
        f"empty within {TARGET_SOAK_DRAIN_S:g} s of the end; zero non-2xx; stored once; all applied.",
    ])


# --- main -------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/ingest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--steady", action="store_true", help="an even pace (--rate) instead of a closed loop")
    mode.add_argument("--soak", action="store_true", help="5 minutes on PostgreSQL, mostly no-op events")
    parser.add_argument("--duration", type=float, default=None,
                        help="measured seconds per target (default 15; --steady 60; --soak 300)")
    parser.add_argument("--warmup", type=float, default=3, help="warm-up seconds per target (default 3; 0: none; "
                        "--steady at least 5)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections, closed loop (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads, closed loop (default 1, see above)")
    parser.add_argument("--rate", type=float, default=1000.0, help="--steady: webhooks per second (default 1000)")
    parser.add_argument("--pace-connections", type=int, default=32, help="--steady: connections (default 32)")
    parser.add_argument("--slice", type=float, default=60.0, help="--soak: seconds per wrk slice (default 60)")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default=None,
                        help="default both; --soak: postgres (both means postgres)")
    parser.add_argument("--postgres-url", default=PG_ADMIN,
                        help="admin connection; a database bench_ingest_<random> is created there and dropped "
                             f"(default {PG_ADMIN})")
    parser.add_argument("--customers", type=int, default=None, help="customers seeded (default 10000; --soak 5000)")
    parser.add_argument("--past-events", type=int, default=100_000,
                        help="earlier deliveries already in the inbox (default 100000)")
    parser.add_argument("--backlog", type=int, default=STORED_BACKLOG,
                        help=f"events stored directly when the load left too small a backlog to time "
                             f"(default {STORED_BACKLOG})")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and the databases")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench/ingest: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads")
    name = "soak" if args.soak else "steady" if args.steady else "closed"
    args.duration = args.duration or {"closed": 15.0, "steady": 60.0, "soak": 300.0}[name]
    args.customers = args.customers or (5000 if args.soak else 10_000)
    backend = args.backend or ("postgres" if args.soak else "both")
    backends = ["sqlite", "postgres"] if backend == "both" else [backend]
    workdir = Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    print(f"bench/ingest ({name}): {', '.join(backends[-1:] if args.soak else backends)}, "
          f"{args.duration:g} s measured, {args.customers} customers, {os.cpu_count()} CPUs; "
          + (f"{args.rate:g}/s over {args.pace_connections} connections" if args.steady else
             f"{args.connections} connections, wrk -t{args.threads}, warm-up {args.warmup:g} s"), flush=True)
    try:
        if args.soak:
            failed = run_soak(args, "postgres" if backend == "both" else backends[0], workdir)
        elif args.steady:
            failed = run_steady(args, backends, workdir)
        else:
            failed = run_closed(args, backends, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory kept: {workdir}")
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
