"""bench/stream: 200 concurrent ``GET /v1/stream`` clients while signed Blaaiz webhooks arrive at 500/s for 60 s.

For each backend (both by default): a fresh database, ``tracker serve --no-worker`` (TRACKER_LOG_LEVEL=warning),
N listeners in a process of their own (bench/stream_clients.py: plain asyncio sockets), then wrk sending
signed webhooks at an even pace (bench/webhook_paced.lua), each the first review of a new customer, so each
acknowledged webhook is one transition that every listener must receive. After the load, a grace period for the
last events, then the listeners' records are joined with the database.

Targets (each backend):
  delivery   every listener receives every change of the run (the transitions of all acknowledged webhooks)
  lag        p99 <= 250 ms, lag = the listener's arrival time - the event's received_at (stamped when the
             webhook is handled, before it is stored and acknowledged: so the lag is at least acknowledgement
             to receipt), over every (listener, event) pair
  pace       wrk kept >= 99 % of the rate; zero non-2xx
Prints the lag percentiles with their ratio to the 250 ms target, and the server's CPU per webhook and per
event sent (listeners x events).

    python bench/stream.py [--backend sqlite|postgres|both] [--clients 200] [--rate 500] [--duration 60]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ingest_load import (
    HOST,
    PG_ADMIN,
    ROOT,
    SECRET,
    CpuWatch,
    Server,
    clean_env,
    create_pg_database,
    drop_pg_database,
    percentile,
    postgres_backends,
    run_wrk,
    sign_pool,
    upgrade,
)
from sqlalchemy import select

HERE = Path(__file__).resolve().parent
LAG_TARGET_MS = 250.0
GRACE = 5.0  # seconds after wrk's last answer for the last events to reach every listener


@contextlib.contextmanager
def database(backend: str, workdir: Path, admin_url: str) -> Iterator[str]:
    url = create_pg_database(admin_url) if backend == "postgres" else f"sqlite:///{workdir / 'stream.db'}"
    try:
        upgrade(url)
        yield url
    finally:
        if backend == "postgres":
            drop_pg_database(admin_url, url)


def admin_key(database_url: str) -> str:
    env = clean_env(TRACKER_DATABASE_URL=database_url, TRACKER_LOG_LEVEL="warning")
    done = subprocess.run([sys.executable, "-m", "tracker.cli", "keys", "create", "--name", "bench-stream",
                           "--scope", "read"], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def bodies(count: int, label: str) -> list[bytes]:
    start = datetime.now(UTC) - timedelta(minutes=5)
    return [json.dumps({
        "message": "Customer status updated", "event_type": "customer.status_changed",
        "customer_id": f"cus_stream_{label}_{n}", "old_status": "PENDING", "new_status": "PROCESSING",
        "comment": None, "updated_at": (start + timedelta(milliseconds=n)).isoformat().replace("+00:00", "Z"),
        "event_id": f"evt_stream_{label}_{n}", "type": "customer"}).encode() for n in range(count)]


def received_at(database_url: str) -> dict[int, tuple[float, float]]:
    """Each stored event's receipt and applied times (unix seconds)."""
    from tracker.db.engine import make_engine
    from tracker.db.tables import inbound_events

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(inbound_events.c.id, inbound_events.c.received_at,
                                       inbound_events.c.processed_at)).all()
    finally:
        engine.dispose()
    return {row.id: (row.received_at.timestamp(), row.processed_at.timestamp() if row.processed_at else math.inf)
            for row in rows}


def run(backend: str, args: argparse.Namespace, workdir: Path) -> bool:
    count = int(args.rate * args.duration)
    with database(backend, workdir, args.postgres_url) as url:
        key = admin_key(url)
        env = clean_env(TRACKER_DATABASE_URL=url, TRACKER_BLAAIZ_WEBHOOK_SECRETS=SECRET,
                        TRACKER_LOG_LEVEL="warning")
        server = Server(f"tracker-{backend}", [sys.executable, "-m", "tracker.cli", "serve", "--no-worker"], env)
        server.start(workdir)
        prefix = workdir / f"pool-{backend}"
        sign_pool(bodies(count, backend), 1, prefix, int(time.time()))
        out = workdir / f"listeners-{backend}.json"
        listeners = subprocess.Popen([sys.executable, str(HERE / "stream_clients.py"), HOST, str(server.port), key,
                                      str(args.clients), str(out)], stdout=subprocess.PIPE, text=True)
        try:
            assert listeners.stdout is not None
            if listeners.stdout.readline().strip() != "READY":
                raise RuntimeError("the listeners did not open their streams")
            assert server.process is not None
            groups = {"server": lambda: [server.process.pid] if server.process else [],
                      "listeners": lambda: [listeners.pid]}
            if backend == "postgres":
                groups["database"] = lambda: postgres_backends(url)
            watch = CpuWatch(groups)
            load = run_wrk(server.url, prefix, args.duration + 3, 32, 1, watch, pace=(args.rate, count))
            time.sleep(GRACE)  # the figure is the lag, measured per event; this only bounds the wait for the last
            cpu = watch.used()
        finally:
            listeners.terminate()
            listeners.wait(60)
            server.stop()
        received = received_at(url)
    return report(backend, args, load, cpu, json.loads(out.read_text()), received)


def report(backend: str, args: argparse.Namespace, load: object, cpu: dict[str, float],
           streams: list[dict[str, object]], received: dict[int, tuple[float, float]]) -> bool:
    ok = getattr(load, "ok", 0)
    non_2xx = getattr(load, "non_2xx", 0)
    pace = getattr(load, "pace", None) or {}
    expected = set(received)
    lags: list[float] = []
    sent: list[float] = []  # applied -> received by the listener: the stream's own part of the lag
    missing = 0
    errors = [s["error"] for s in streams if s["error"]]
    for stream in streams:
        events = stream["events"]
        times = stream["times"]
        assert isinstance(events, list)
        assert isinstance(times, list)
        missing += len(expected - set(events))
        lags += [(t - received[e][0]) * 1000 for e, t in zip(events, times, strict=True) if e in received]
        sent += [(t - received[e][1]) * 1000 for e, t in zip(events, times, strict=True) if e in received]
    applying = [(applied - got) * 1000 for got, applied in received.values()]
    p50, p99, worst = percentile(lags, 0.5), percentile(lags, 0.99), max(lags, default=0.0)
    delivered = len(lags)
    kept = pace.get("rate", 0) >= 0.99 * args.rate
    passed = {"delivery": missing == 0 and not errors and len(expected) >= ok,
              "lag": p99 <= LAG_TARGET_MS, "pace": kept and non_2xx == 0}
    print(f"\n== {backend}: {args.clients} streams, {args.rate}/s for {args.duration:g} s")
    print(f"  webhooks acknowledged {ok} (non-2xx {non_2xx}), stored {len(expected)}, pace {pace.get('rate', 0):.0f}/s")
    print(f"  events received {delivered} of {len(expected) * args.clients} (missing {missing}; stream errors "
          f"{len(errors)}{': ' + errors[0] if errors else ''})")
    print(f"  lag ms: p50 {p50:.1f}  p99 {p99:.1f} ({p99 / LAG_TARGET_MS:.2f} x the 250 ms target)  max {worst:.1f}")
    print(f"    of which received -> applied (the applier): p50 {percentile(applying, 0.5):.1f}  p99 "
          f"{percentile(applying, 0.99):.1f}; applied -> at the listener (the stream): p50 "
          f"{percentile(sent, 0.5):.1f}  p99 {percentile(sent, 0.99):.1f}")
    batches = sorted({applied for _, applied in received.values()})
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(batches)]
    print(f"  applier: {len(batches)} batches, {len(received) / max(len(batches), 1):.1f} events each; between "
          f"their starts p50 {percentile(gaps, 0.5):.1f} ms, p99 {percentile(gaps, 0.99):.1f} ms")
    server_cpu = cpu.get("server", 0.0) + cpu.get("database", 0.0)
    print(f"  CPU: server {cpu.get('server', 0):.1f} s, database {cpu.get('database', 0):.1f} s, listeners "
          f"{cpu.get('listeners', 0):.1f} s, wrk {cpu.get('wrk', 0):.1f} s; server+database "
          f"{server_cpu / max(ok, 1) * 1e6:.0f} us per webhook, {server_cpu / max(delivered, 1) * 1e6:.1f} us per "
          "event sent")
    for name, good in passed.items():
        print(f"  {name:<9}{'PASS' if good else 'FAIL'}")
    return all(passed.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--postgres-url", default=PG_ADMIN)
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        for backend in backends:
            results.append(run(backend, args, Path(tmp)))
    print(f"\nbench/stream: {'PASS' if all(results) else 'FAIL'}")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
