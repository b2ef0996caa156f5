"""bench/ingest_writer: what the group-commit writer costs per webhook, without HTTP, and where it goes.

bench/ingest measures the whole server under wrk; this isolates the part that bounds it: the single writer
thread (one on SQLite) that stores and applies each batch. It seeds a database as bench/ingest does (10,000
Blaaiz customers, an inbox of earlier deliveries), builds batches of the same realistic webhooks
(``bench/ingest.py``'s ``Feed``, parsed as the webhook handler parses them), and calls
``Ingestor.ingest`` on them one batch after another on one kept connection, as the writer does, under
cProfile. It prints:

- wall time per event, and the part of it spent in COMMIT (the WAL flush: an fsync on SQLite; on PostgreSQL
  COMMIT goes with the writes, see below, and this part is about 0) and, on SQLite,
  in the WAL checkpoint the server's writer runs between batches (run here the same way; until 2026-12-05
  this bench left SQLite's own checkpoint inside the commits, so its COMMIT figure included it);
  the first ``--batches`` batches run plainly for these figures, as many more under cProfile for the table;
- the writer's CPU per event (the rest), next to the budget the 0.5-of-bare target of bench/ingest leaves
  for all of the tracker's work per webhook (``--bare-us``: the bare endpoint's server CPU per request,
  as bench/ingest prints it; 93-112 us on the 2-core machine of 2026-12-04);
- the functions of tracker/ with the most time of their own and below them (cumulative), per event;
- the wall time of each statement the batch runs, per event (as many batches again, each statement timed
  around the driver's ``execute`` and ``fetchone``; COMMIT is timed around the commit). On PostgreSQL the
  writes run in pipeline mode: their ``execute`` only queues them, and the wait for their answers is the row
  "end of pipeline". COMMIT is queued with them there (since 2026-12-05's fourth session; with the notices
  in a batch that raised alerts), so its fsync is in that row, and the COMMIT rows are the queueing and
  SQLAlchemy's commit, which finds nothing left to commit;
- ``--postgres-url`` may point at bench/delay_proxy.py, to see the writer with a network between it and
  the database (round trips cost more there: 2026-12-05, 0.83 ms per round trip, see the README);
- a closed loop through the ``GroupCommitter`` itself, as the server drives it but without HTTP: ``--clients``
  concurrent submitters (32, bench/ingest's connections), each sending its next webhook once the previous one
  is acknowledged: the writer's own ceiling in webhooks/s, and the batch size it settles at.

    bench/ingest_writer                      # SQLite, 300 batches of 18 (bench/ingest's mean batch)
    bench/ingest_writer --backend postgres --batches 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import pstats
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import ingest as bench_ingest  # noqa: E402 - bench/ingest.py, beside this file

from tracker.bootstrap import build  # noqa: E402
from tracker.clock import SystemClock  # noqa: E402
from tracker.ingest import Delivery, IngestResult, _Writer  # noqa: E402
from tracker.providers import blaaiz  # noqa: E402
from tracker.settings import Settings  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--postgres-url", default=bench_ingest.PG_ADMIN)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--batch", type=int, default=18, help="events per batch (default 18)")
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--past-events", type=int, default=20_000)
    parser.add_argument("--bare-us", type=float, default=100.0,
                        help="bare endpoint's server CPU per request, from bench/ingest (default 100)")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--clients", type=int, default=32,
                        help="concurrent submitters of the closed loop through the GroupCommitter (default 32)")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="bench_ingest_writer_")
    url = (f"sqlite:///{workdir}/tracker.db" if args.backend == "sqlite"
           else bench_ingest.create_pg_database(args.postgres_url))
    try:
        bench_ingest.upgrade(url)
        rng = random.Random(1)
        statuses = bench_ingest.seed_database(url, args.customers, args.past_events, rng)
        feed = bench_ingest.Feed(statuses, rng, datetime.now(UTC))
        container = build(Settings(database_url=url, blaaiz_webhook_secrets=("bench",)), SystemClock())
        container.start()
        try:
            batches = []
            # Timed plainly, under cProfile, with each statement timed, then fed to the closed loop.
            for _ in range(4 * args.batches):
                batch = []
                for _ in range(args.batch):
                    body = feed.event("w")
                    batch.append(Delivery("blaaiz", datetime.now(UTC), body, {}, blaaiz.parse(json.loads(body))))
                batches.append(batch)
            ingestor = container.ingestor
            # The server's own writer (tracker.ingest._Writer): its kept connection and, on SQLite, its WAL
            # checkpoint between batches, timed apart from the commit (it is part of the wall time).
            writer = _Writer(ingestor)

            def run(batch: list[Delivery]) -> tuple[list[IngestResult], float]:
                results = writer.ingest(batch)
                started = time.perf_counter()
                writer.between_batches()
                return results, time.perf_counter() - started

            outcomes: dict[str, int] = {}
            checkpoints = 0.0
            started, cpu = time.perf_counter(), time.process_time()
            for batch in batches[:args.batches]:
                results, checkpoint = run(batch)
                checkpoints += checkpoint
                for result in results:
                    outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            profile = cProfile.Profile()
            profile.enable()
            for batch in batches[args.batches:2 * args.batches]:
                run(batch)
            profile.disable()
            timed = StatementTimes()
            plain_cursor, plain_pipeline = ingestor.statements.cursor, ingestor.statements.pipeline
            ingestor.statements.cursor = timed.wrap(plain_cursor)  # type: ignore[method-assign]
            if args.backend == "postgres":  # SQLite has no pipeline
                ingestor.statements.pipeline = timed.wrap_pipeline(plain_pipeline)  # type: ignore[method-assign]
            assert writer._conn is not None  # kept since the first batch
            dbapi = writer._conn.connection.dbapi_connection
            plain_commit = dbapi.commit
            with contextlib.suppress(AttributeError):  # psycopg's; sqlite3's is read-only (the profile has it)
                dbapi.commit = timed.wrap_commit(plain_commit)
            for batch in batches[2 * args.batches:3 * args.batches]:
                run(batch)
            ingestor.statements.cursor = plain_cursor  # type: ignore[method-assign]
            ingestor.statements.pipeline = plain_pipeline  # type: ignore[method-assign]
            with contextlib.suppress(AttributeError):
                dbapi.commit = plain_commit
            writer.close()
            closed = asyncio.run(closed_loop(container, [d for batch in batches[3 * args.batches:] for d in batch],
                                             args.clients))
        finally:
            container.stop()
            container.engine.dispose()
    finally:
        if args.backend == "postgres":
            bench_ingest.drop_pg_database(args.postgres_url, url)
        shutil.rmtree(workdir, ignore_errors=True)

    events = args.batches * args.batch
    stats = pstats.Stats(profile)
    commit = sum(row[3] for func, row in stats.stats.items()  # type: ignore[attr-defined]
                 if func[2] in ("<method 'commit' of 'sqlite3.Connection' objects>",) or
                 (func[2] == "commit" and "psycopg" in func[0]))
    per = 1e6 / events
    print(f"bench/ingest_writer: {args.backend}, {args.batches} batches of {args.batch} events "
          f"({', '.join(f'{k} {v}' for k, v in sorted(outcomes.items()))})")
    print(f"  wall per event      {wall * per:7.0f} us  (commit about {commit * per:.0f} us of it, from the profile)")
    if args.backend == "sqlite":
        print(f"  checkpoint          {checkpoints * per:7.0f} us  of the wall, between batches (as the server's "
              "writer does it)")
    print(f"  CPU per event       {cpu * per:7.0f} us  (this process; PostgreSQL's own work is not in it)")
    budget = args.bare_us  # 0.5 of bare: twice bare's CPU per request in all, bare's own share being HTTP
    print(f"  0.5-of-bare budget  {budget:7.0f} us  for everything beyond bare's HTTP handling "
          f"(--bare-us); CPU / budget = {cpu * per / budget:.1f}")
    rows = []
    for (file, line, name), (_, _, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        if "/tracker/" in file:
            rows.append((cumulative, own, f"{file.split('/tracker/')[-1]}:{line}({name})"))
    print(f"  tracker/ functions under cProfile (which inflates Python code), per event (cumulative / own, us), "
          f"top {args.top}:")
    for cumulative, own, where in sorted(rows, reverse=True)[:args.top]:
        print(f"    {cumulative * per:7.0f} {own * per:6.0f}  {where}")
    print("  statements, wall time per event (us), count:")
    if "COMMIT" not in timed.totals:
        timed.totals["COMMIT (from the profile)"] = [args.batches, commit]
    for name, (count, seconds) in sorted(timed.totals.items(), key=lambda kv: -kv[1][1]):
        print(f"    {seconds * per:7.1f}  {count:5d}  {name}")
    rate, cpu_per, mean_batch = closed
    print(f"  closed loop, {args.clients} clients through the GroupCommitter (no HTTP): {rate:.0f} webhooks/s, "
          f"{cpu_per:.0f} us CPU per webhook, {mean_batch:.1f} per batch")
    return 0


class StatementTimes:
    """Wall time per statement kind (its first words), measured around the DB-API cursor's ``execute``
    (and ``executemany``)."""

    def __init__(self) -> None:
        self.totals: dict[str, list[Any]] = {}

    def add(self, name: str, seconds: float, count: bool = True) -> None:
        entry = self.totals.setdefault(name, [0, 0.0])
        entry[0] += count
        entry[1] += seconds

    def wrap_pipeline(self, pipeline: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """PostgreSQL's writes are sent without waiting (pipeline mode): the wait for all of them is at the end of
        the pipeline block, timed here. Without this, the writes would look free."""
        times = self

        @contextlib.contextmanager
        def timed(cur: Any) -> Iterator[None]:
            with pipeline(cur):
                yield
                started = time.perf_counter()  # the block's work is done: what follows is the wait
            times.add("end of pipeline (the writes' answers)", time.perf_counter() - started)
        return timed

    def wrap(self, make_cursor: Callable[[Any], Any]) -> Callable[[Any], Any]:
        times = self

        class Timed:
            def __init__(self, cursor: Any) -> None:
                self._cursor = cursor
                self._last = ""

            def execute(self, sql: str, params: Any = ()) -> Any:
                return self._timed(self._cursor.execute, sql, params)

            def executemany(self, sql: str, rows: Any) -> Any:
                return self._timed(self._cursor.executemany, sql, rows)

            def _timed(self, run: Callable[[str, Any], Any], sql: str, params: Any) -> Any:
                started = time.perf_counter()
                self._last = " ".join(str(sql).split()[:4])[:48]
                try:
                    return run(sql, params)
                finally:
                    times.add(self._last, time.perf_counter() - started)

            def fetchone(self) -> Any:  # in pipeline mode the wait for a read's answer is here
                started = time.perf_counter()
                try:
                    return self._cursor.fetchone()
                finally:
                    times.add(self._last, time.perf_counter() - started, count=False)

            def __getattr__(self, name: str) -> Any:
                return getattr(self._cursor, name)

        return lambda dbapi_connection: Timed(make_cursor(dbapi_connection))

    def wrap_commit(self, commit: Callable[[], None]) -> Callable[[], None]:
        def timed() -> None:
            started = time.perf_counter()
            try:
                commit()
            finally:
                self.add("COMMIT", time.perf_counter() - started)
        return timed


async def closed_loop(container: Any, deliveries: list[Delivery], clients: int) -> tuple[float, float, float]:
    """``clients`` submitters through the container's GroupCommitter, each waiting for its acknowledgement
    before the next: webhooks/s, CPU per webhook (this process), mean batch size."""
    pending = iter(deliveries)
    commits = 0
    committer = container.committer
    plain = committer._commit

    def counted(*args: Any) -> Any:
        nonlocal commits
        commits += 1
        return plain(*args)

    committer._commit = counted

    async def client() -> None:
        for delivery in pending:
            await committer.submit(delivery)

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    committer._commit = plain
    return len(deliveries) / wall, cpu / len(deliveries) * 1e6, len(deliveries) / max(commits, 1)


if __name__ == "__main__":
    sys.exit(main())
