"""bench/poll: one ``tracker worker`` against a provider with a request budget: does it use the budget, and never
more?

One command (``bench/poll`` or ``python bench/poll.py``). It:

1. creates a fresh database (SQLite by default, or PostgreSQL with ``--backend postgres``; ``tracker db
   upgrade``) and starts a CryptoPocket simulator server (``python -m tracker.providers.simulators
   cryptopocket --latency 0.05 --rate 20/s``) holding CUSTOMERS users in ``processing``; the simulator answers
   429 to any request over its budget (a sliding 1 s window);
2. inserts those CUSTOMERS as tracked cryptopocket customers pending for an hour and all due now, far more than
   the budget can poll in the run: the worker is never short of work;
3. starts one ``tracker worker`` with ``TRACKER_CRYPTOPOCKET_RATE_LIMIT`` = the budget (everything else at its
   default: tick 1 s, concurrency 4) and lets it run DURATION seconds from its first request;
4. reads the simulator's request log (``GET /_sim/log``) and the worker's CPU time (``/proc/<pid>/stat``).

Targets: the request rate over the steady window (from WARMUP seconds after the first request to the end) at
least 95 % of the budget; at most the budget's count in any 1 s sliding window over the whole run; no 429.
Reported too: the worker's CPU seconds per poll over the steady window.

It prints a report and PASS or FAIL; the exit status is 1 on FAIL.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from workers import (  # noqa: E402  (bench/ is not a package: its sibling module is found through sys.path)
    API_KEY,
    API_SECRET,
    Poll,
    Simulator,
    base_env,
    cpu_seconds,
    cpu_stall,
    postgres_database,
    seed_pending,
    sim_ids,
    upgrade,
)

from tracker.db.engine import make_engine  # noqa: E402


@dataclass
class Report:
    backend: str
    customers: int
    budget: int  # requests per second
    duration: float
    warmup: float
    polls: list[Poll] = field(default_factory=list)
    window_polls: int = 0
    window: float = 0.0
    cpu: float = 0.0  # worker CPU seconds over the window
    peak: int = 0  # most requests in any 1 s sliding window, whole run
    peak_at: float = 0.0  # seconds after the first request
    throttled: int = 0  # 429 answers, whole run
    failed: int = 0  # other non-200 answers
    cpu_pressure: float | None = None  # share of the window some task on the machine waited for a CPU (PSI)
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.window_polls / self.window if self.window else 0.0

    @property
    def ratio(self) -> float:
        return self.rate / self.budget

    @property
    def cpu_per_poll(self) -> float:
        return self.cpu / self.window_polls if self.window_polls else float("nan")

    @property
    def passed(self) -> bool:
        return (not self.errors and self.ratio >= 0.95 and self.peak <= self.budget and self.throttled == 0
                and self.failed == 0)


def max_in_window(stamps: list[float], seconds: float = 1.0) -> tuple[int, float]:
    """Most stamps within any ``seconds`` (a window [t - seconds, t] closed at both ends: the strict reading),
    and where that window ends."""
    ordered = sorted(stamps)
    best, best_at, start = 0, 0.0, 0
    for end, stamp in enumerate(ordered):
        while ordered[start] < stamp - seconds:
            start += 1
        if end - start + 1 > best:
            best, best_at = end - start + 1, stamp
    return best, best_at


@contextlib.contextmanager
def database(backend: str, workdir: Path, keep: bool, out: TextIO) -> Iterator[str]:
    if backend == "postgres":
        with postgres_database(keep, out) as url:
            yield url
        return
    url = f"sqlite:///{workdir / 'poll.db'}"
    upgrade(url)
    yield url


def run(backend: str = "sqlite", *, customers: int = 10_000, budget: int = 20, latency: float = 0.05,
        duration: float = 60.0, warmup: float = 5.0, keep: bool = False, out: TextIO = sys.stdout) -> Report:
    report = Report(backend, customers, budget, duration, warmup)
    workdir = Path(tempfile.mkdtemp(prefix=f"poll-{backend}-"))
    print(f"poll: {customers} pending cryptopocket customers due now on {backend}; simulator latency "
          f"{latency * 1000:.0f} ms, budget {budget}/s (429 over it); one worker with "
          f"TRACKER_CRYPTOPOCKET_RATE_LIMIT={budget}/s, defaults otherwise; {duration:.0f} s from its first request",
          file=out, flush=True)
    sim: Simulator | None = None
    worker: subprocess.Popen[bytes] | None = None
    log_path = workdir / "worker.log"
    try:
        with database(backend, workdir, keep, out) as url:
            sim = Simulator(workdir, customers=customers, latency=latency, rates=[f"{budget}/s"])
            sim.start()
            engine = make_engine(url)
            try:
                seed_pending(engine, sim_ids(customers), first_due=datetime.now(UTC) - timedelta(seconds=1),
                             spread=timedelta(0))
            finally:
                engine.dispose()
            env = {**base_env(), "TRACKER_DATABASE_URL": url, "TRACKER_LOG_LEVEL": "warning",
                   "TRACKER_CRYPTOPOCKET_BASE_URL": sim.api_url, "TRACKER_CRYPTOPOCKET_API_KEY": API_KEY,
                   "TRACKER_CRYPTOPOCKET_API_SECRET": API_SECRET, "TRACKER_CRYPTOPOCKET_RATE_LIMIT": f"{budget}/s"}
            with log_path.open("ab") as log:
                worker = subprocess.Popen([sys.executable, "-m", "tracker.cli", "worker"], env=env, cwd=HERE.parent,
                                          stdout=subprocess.DEVNULL, stderr=log)
            deadline = time.monotonic() + 60
            while not sim.fetch():  # the first request starts the clock
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the worker made no request (exit {worker.returncode}): "
                                       f"{log_path.read_text(errors='replace')[-2000:]}")
                time.sleep(0.05)
            first = sim.polls[0].mono
            sleep_until(first + warmup)
            cpu0, stall0 = cpu_seconds(worker.pid), cpu_stall()
            t0 = time.monotonic()
            sleep_until(first + duration)
            cpu1, stall1 = cpu_seconds(worker.pid), cpu_stall()
            t1 = time.monotonic()
            if stall0 is not None and stall1 is not None:
                report.cpu_pressure = (stall1 - stall0) / (t1 - t0)
            if worker.poll() is not None:
                report.errors.append(f"the worker died: {log_path.read_text(errors='replace')[-2000:]}")
            worker.terminate()
            worker.wait(15)
            time.sleep(0.2)
            polls = sim.fetch()
            report.polls = polls
            report.window = t1 - t0
            report.window_polls = sum(1 for p in polls if t0 <= p.mono < t1)
            report.cpu = cpu1 - cpu0
            report.peak, peak_at = max_in_window([p.mono for p in polls])
            report.peak_at = peak_at - first
            report.throttled = sum(1 for p in polls if p.status == 429)
            report.failed = sum(1 for p in polls if p.status not in (200, 429))
    except Exception as exc:
        report.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        if sim is not None:
            sim.stop()
        if keep:
            print(f"kept {workdir}", file=out)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_report(report, out)
    return report


def sleep_until(moment: float) -> None:
    left = moment - time.monotonic()
    if left > 0:
        time.sleep(left)


def print_report(report: Report, out: TextIO = sys.stdout) -> None:
    print(f"  requests: {len(report.polls)} in all; steady window ({report.warmup:g} s after the first request to "
          f"the end, {report.window:.1f} s): {report.window_polls} requests = {report.rate:.2f}/s = "
          f"{report.ratio:.1%} of the {report.budget}/s budget (must be >= 95 %)", file=out)
    print(f"  most requests in any 1 s sliding window: {report.peak} (at +{report.peak_at:.1f} s; must be <= "
          f"{report.budget}); 429 answers: {report.throttled} (must be 0); other failures: {report.failed}", file=out)
    print(f"  worker CPU: {report.cpu:.2f} s over the window = {report.cpu_per_poll * 1000:.2f} ms per poll", file=out)
    if report.cpu_pressure is not None:
        print(f"  machine: some task waited for a CPU {report.cpu_pressure:.0%} of the window (PSI; the slots keep "
              f"3 % under the budget, about 30 ms a second: stalls longer than that between a request's slot and "
              f"its arrival can put one over)", file=out)
    for error in report.errors:
        print(f"  error: {error}", file=out)
    print(f"poll ({report.backend}): {'PASS' if report.passed else 'FAIL'}", file=out, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--budget", type=int, default=20, help="requests per second (simulator and worker)")
    parser.add_argument("--latency", type=float, default=0.05, help="simulator latency in seconds")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds from the first request")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds left out of the rate's window")
    parser.add_argument("--keep", action="store_true", help="keep the database and logs")
    args = parser.parse_args(argv)
    report = run(args.backend, customers=args.customers, budget=args.budget, latency=args.latency,
                 duration=args.duration, warmup=args.warmup, keep=args.keep)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
